"""Choose per-layer widths for the pass: predicted error curves turned into bits for the configured target.

Sits between the numerics (:mod:`onnx_statq.codebook.predict`, :mod:`onnx_statq.codebook.allocate`) and the pass,
which only hands over each free layer's weights and first encoding and re-encodes at the widths returned here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..codebook import EncodedTensor, Representation
from ..codebook.allocate import HI_BITS, LO_BITS, allocate_options, stored_bits
from ..codebook.predict import predict_curve
from ..codebook.tensor import Layout, fits_half, to_groups
from ..config import QuantConfig
from ..errors import ConfigError
from ..workers import ordered_map

__all__ = [
    "CHANNEL_DECODE_BYTES",
    "DECODE_BYTES",
    "TABLE_BYTES",
    "Choice",
    "Layer",
    "choose_bits",
    "layer_curve",
    "table_bits",
]

logger = logging.getLogger(__name__)

# Serialized size of one layer's decode nodes and small constants, the tables over the byte values left out: 806 bytes
# per layer on the demo at 4 bits, 574 on the PP-OCR classifier, 788 on PP-OCRv6 rec, 733 on MiniLM (1792, 1214,
# 1650 and 1636 while every layer built its own tables).
DECODE_BYTES = 800
# The tables, built once per graph that decodes weights (onnx_statq.graph.tables), for every layer of the graph:
# 862 bytes on the demo at 4 bits (301 at 2 bits), 788 on the classifier, 979 on PP-OCRv6 rec, 1205 on MiniLM.
TABLE_BYTES = 1000
# What a per-channel decode adds to a tensor one (its channel offsets; measured 205 bytes at every width but 8): paid
# by the layout that needs it. The rest of a decode is about the same whatever the layout, so the budget leaves it out.
CHANNEL_DECODE_BYTES = 205


@dataclass(frozen=True)
class Layer:
    """One weight whose width is free: its values, channel axis and the encoding at the reference width.

    ``alternatives`` are the other layouts the allocation may choose for it (tensor or channel codebooks, float16),
    encoded at the reference width; empty when the layout is fixed by the configuration. ``floored``: an average
    budget keeps it above its floor (:func:`_floor`); false for a weight only MatMul nodes read."""

    values: np.ndarray
    axis: int | None
    encoded: EncodedTensor
    alternatives: tuple[Layout, ...] = ()
    floored: bool = True

    @property
    def layouts(self) -> list[Layout]:
        mine = self.encoded.representation
        return [Layout.of(self.encoded), *(a for a in self.alternatives if a.representation != mine)]


@dataclass(frozen=True)
class Choice:
    bits: list[int]
    predicted: list[dict[int, float]]  # the statistical prediction per layer and width, before anchoring
    target: str  # what the widths were chosen for, for the report
    layouts: list[Representation] | None = None  # per layer, the layout chosen


def table_bits(enc: EncodedTensor) -> int:
    """Bits one codebook level costs across all of a layer's codebooks."""
    return Layout.of(enc).table_bits


def layer_curve(
    layer: Layer, layout: Layout | EncodedTensor | None = None, widths: range | list[int] | None = None
) -> dict[int, float]:
    """Predicted relative error at every width (or at ``widths``), on the group view the layer's codebooks (or
    ``layout``'s) use."""
    enc = layout or layer.encoded
    widths = range(LO_BITS, HI_BITS + 1) if widths is None else widths
    if enc.representation == Representation.FLOAT16:
        return dict.fromkeys(widths, enc.rel_error)
    per_channel = enc.representation == Representation.CHANNEL
    values = np.asarray(layer.values)
    rows = to_groups(values, layer.axis if per_channel else None)
    half = layer.values.dtype == np.float16 or (per_channel and fits_half(values))  # the levels' type, as encoded
    # one codebook over a tensor is measured per channel (EncodedTensor.rel_error): predict that, not the whole
    # tensor's error, where the channels can disagree
    channels = None if per_channel or layer.axis is None or values.ndim < 2 else to_groups(values, layer.axis)
    return predict_curve(rows, widths, half_levels=half, channels=channels)


def _anchored(curve: dict[int, float], measured: float, ref: int) -> dict[int, float]:
    """The prediction's shape through the measured error at the reference width: the best of both where a fit
    at one width has been paid for anyway."""
    scale = measured / curve[ref] if curve[ref] > 0 else 1.0
    return {b: v * scale for b, v in curve.items()}


@dataclass(frozen=True)
class _Options:
    """Every (layout, width) of every layer, with its stored bits and the error the allocation weighs."""

    layout: list[list[Representation]]
    bits: list[list[int]]
    costs: list[list[tuple[float, float]]]
    predicted: list[list[dict[int, float]]]

    def pick(self, chosen: list[int], target: str) -> Choice:
        layers = range(len(chosen))
        widths = [self.bits[i][chosen[i]] for i in layers]
        layouts = [self.layout[i][chosen[i]] for i in layers]
        return Choice(widths, [self.predicted[i][chosen[i]] for i in layers], target, layouts)


def _options(config: QuantConfig, layers: Sequence[Layer]) -> _Options:
    """A float16 layout is one option (16 bits, its error); a codebook layout is one option per width."""
    ref = config.bits
    out = _Options([], [], [], [])
    curves = ordered_map(_curves, layers, config.workers, [int(la.values.nbytes) for la in layers])
    for la, per_layout in zip(layers, curves, strict=True):
        lo = _floor(config) if la.floored else LO_BITS
        lay, bits, costs, pred = [], [], [], []
        for layout, curve in zip(la.layouts, per_layout, strict=True):
            # anchored at the reference width the first encoding used; a 1-bit one is below the predicted widths
            unanchored = config.auto_bits or ref not in curve
            anchored = curve if unanchored else _anchored(curve, max(layout.rel_error, 1e-12), ref)
            size, table = int(la.values.size), layout.table_bits
            half = layout.representation == Representation.FLOAT16
            widths = [16] if half else list(range(lo, HI_BITS + 1))
            for b in widths:
                lay.append(layout.representation)
                bits.append(b)
                stored = float(size * 16) if half else stored_bits(size, table, b)
                if layout.representation == Representation.CHANNEL:
                    stored += 8 * CHANNEL_DECODE_BYTES
                costs.append((stored, anchored[min(b, HI_BITS)]))
                pred.append(curve)
        out.layout.append(lay)
        out.bits.append(bits)
        out.costs.append(costs)
        out.predicted.append(pred)
    return out


def _curves(layer: Layer) -> list[dict[int, float]]:
    """The predicted curve of each of a layer's layouts: one task of the thread pool, which reads only ``layer``."""
    return [layer_curve(layer, layout) for layout in layer.layouts]


def _floor(config: QuantConfig) -> int:
    """The fewest bits a floored layer may get under an average budget: one below the average.

    The summed relative error weighs every layer the same, so on its own it starves the largest layer: at a 4-bit
    average it gave MiniLM's 11.7M-weight word embedding 2 bits (top-1 -1.17 points); with this floor, 3 bits
    (+1.00, same size). Without it, PP-OCRv6 det with one codebook per tensor at 4 bits put 47 convolutions at
    2 bits (precision 0, against -0.62 points with it). Weights that only MatMul nodes read have no floor: it held
    PP-OCRv6 recognition's 2.2M-weight output MatMul at 3 bits, and the bits it took left the convolutions short
    (``--granularity channel`` at 4 bits: -9.29 points of character accuracy with it, -0.10 without; ``tensor``
    -13.28 and -1.32; the default -0.21 and -0.15). A rule drawn from those measurements, not from theory. Targets
    other than an average (size ratio, SQNR) keep the full range."""
    budget = config.budget
    return LO_BITS if budget is None else max(LO_BITS, int(budget) - 1)


def choose_bits(
    config: QuantConfig,
    layers: Sequence[Layer],
    other_bytes: int,
    input_bytes: int,
    importance: Sequence[float] | None = None,
) -> Choice:
    """Widths (and, where a layer has alternatives, layouts) for the free layers under ``config``'s target.

    ``other_bytes`` is what the output keeps besides these layers (graph, kept tensors), ``input_bytes`` the input
    file size; both only matter for ``size_ratio``. ``importance`` weighs each layer's predicted error (measured
    sensitivities; equal without calibration data): in the sum a budget minimises, and, with a per-layer SQNR
    target, in the error compared with the target.
    """
    opts = _options(config, layers)
    if importance is not None:
        weighted = [[(c, e * w) for c, e in costs] for costs, w in zip(opts.costs, importance, strict=True)]
        opts = _Options(opts.layout, opts.bits, weighted, opts.predicted)
    if config.target_sqnr is not None:
        target = 10 ** (-config.target_sqnr / 10)
        chosen = [_cheapest_meeting(costs, target) for costs in opts.costs]
        return opts.pick(chosen, f"target SQNR {config.target_sqnr:g} dB per layer")
    if config.size_ratio is not None:
        ratio = config.size_ratio
        budget = (input_bytes / ratio - other_bytes) * 8
        cheapest = sum(min(c for c, _ in costs) for costs in opts.costs)
        if cheapest > budget:
            raise ConfigError(
                f"size ratio {ratio:g} is out of reach: the smallest encoding gives "
                f"{input_bytes / (other_bytes + cheapest / 8):.2f}x"
            )
        logger.info("size ratio %.2f: %.0f bytes for the weights", ratio, budget / 8)
        return opts.pick(allocate_options(opts.costs, budget), f"size ratio {ratio:g}")
    avg = config.budget
    if avg is None:
        raise ConfigError("no allocation target")  # unreachable: the config requires one when allocating
    # ``bits`` is an average that includes the codebooks beyond one float32 codebook per layer: per-channel tables
    # are paid for with index bits, so 4 bits gives about the same size whatever the layouts (docs/method.md,
    # "Choosing the widths").
    sizes = [int(la.values.size) for la in layers]
    allowance = sum(sizes) * avg + len(sizes) * 32 * 2.0**avg
    return opts.pick(allocate_options(opts.costs, allowance), f"average {avg:g} bits per weight, codebooks included")


def _cheapest_meeting(costs: list[tuple[float, float]], target: float) -> int:
    """The cheapest option whose predicted error meets ``target``; the most accurate one when none does."""
    meeting = [j for j, (_, err) in enumerate(costs) if err <= target]
    if not meeting:
        return min(range(len(costs)), key=lambda j: (costs[j][1], costs[j][0]))
    return min(meeting, key=lambda j: (costs[j][0], costs[j][1]))
