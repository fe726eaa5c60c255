"""How much each layer's weight error costs at the model's outputs, measured on calibration data.

The data-free allocation minimises the sum of the layers' relative weight errors, as if every layer mattered the
same. With calibration data each layer gets a measured weight instead: its sensitivity, the model's relative output
error when only that layer is quantized (at the reference width), divided by that layer's relative weight error.
For small errors the output error of the whole model is then about the sum of sensitivity x weight error, which is
what the allocation minimises.

One session serves every layer: the weights are turned into graph inputs, so each measurement is one run with one
weight swapped, not a session per layer. Only weights of the main graph are measured; the caller gives the others
a neutral weight.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper

from ..errors import CalibrationError, first_line
from ..plan import SensitivityProbe
from .data import feed_samples
from .masks import feed_masks, real_positions

logger = logging.getLogger(__name__)

__all__ = ["MAX_SENSITIVITY_SAMPLES", "measure_sensitivities"]

MAX_SENSITIVITY_SAMPLES = 16  # a relative output error per layer needs few samples; each layer costs one run of them


def _weights_as_inputs(model: onnx.ModelProto, names: set[str]) -> onnx.ModelProto:
    """A copy whose named initializers and Constant-node outputs are graph inputs instead."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    kept = [t for t in g.initializer if t.name not in names]
    moved = [t for t in g.initializer if t.name in names]
    del g.initializer[:]
    g.initializer.extend(kept)
    consts = [n for n in g.node if n.op_type == "Constant" and n.output[0] in names]
    for n in consts:
        g.node.remove(n)
    listed = {i.name for i in g.input}  # below IR 4 initializers are listed as inputs already
    for t in moved:
        if t.name not in listed:
            g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    for n in consts:
        value = next(a.t for a in n.attribute if a.name == "value")
        g.input.append(helper.make_tensor_value_info(n.output[0], value.data_type, list(value.dims)))
    return out


# the relative output error of a weight whose quantized values make an output overflow where the float one does
# not: the most sensitive weight there can be, kept finite so that the allocation can still weigh it
OVERFLOW_ERROR = 1e6


def _finite(ref: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The positions where the float output is finite (masked logits hold -inf by design), as verify compares."""
    if ref.shape != out.shape or np.isfinite(ref).all():
        return ref, out
    keep = np.isfinite(ref)
    return ref[keep], out[keep]


def _relative_error(
    ref: list[list[np.ndarray]], out: list[list[np.ndarray]], masks: Sequence[np.ndarray | None] | None = None
) -> float:
    """Mean over outputs of squared error over power, summed over the feeds first; with ``masks`` (per feed), only
    at the real positions of outputs laid out ``[batch, sequence, ...]`` (:mod:`.masks`)."""
    masks = masks if masks is not None else [None] * len(ref)
    errs = []
    for k in range(len(ref[0])):
        pairs = [
            _finite(real_positions(r[k], m), real_positions(np.asarray(o[k], np.float64), m))
            for r, o, m in zip(ref, out, masks, strict=True)
        ]
        power = sum(float(np.sum(np.square(r, dtype=np.float64))) for r, _ in pairs)
        err = sum(float(np.sum(np.square(o - r))) for r, o in pairs)
        ratio = err / power if power > 0 else 0.0
        errs.append(ratio if np.isfinite(ratio) else OVERFLOW_ERROR)  # quantizing it made an output overflow
    return float(np.mean(errs)) if errs else 0.0


def measure_sensitivities(
    model: onnx.ModelProto,
    feeds: Sequence[dict[str, np.ndarray]],
    probes: Sequence[SensitivityProbe],
    mask_input: str | None = None,
) -> dict[str, float]:
    """Output relative error per unit of relative weight error, per probe (float outputs and non-float ones are
    compared as floats; a probe whose weight error is 0 gets 0). ``mask_input``: the padding mask, whose padded
    positions are not counted (:mod:`.masks`)."""
    from .runtime import cpu_session, raise_if_unrunnable

    base = {p.name: p.values for p in probes}
    sample_feeds = _first_samples(feeds, MAX_SENSITIVITY_SAMPLES)
    masks = feed_masks(sample_feeds, mask_input)
    try:
        sess = cpu_session(_weights_as_inputs(model, {p.name for p in probes}))
    except Exception as exc:
        raise_if_unrunnable(exc, "the whole model")
        raise
    try:
        ref = [[np.asarray(o, np.float64) for o in sess.run(None, {**f, **base})] for f in sample_feeds]
    except Exception as exc:  # a kernel onnxruntime finds missing only when run is the model's fault, not the data's
        if type(exc).__name__ == "NotImplemented":
            raise_if_unrunnable(exc, "the whole model")
        raise CalibrationError(
            f"onnxruntime cannot run the model on the calibration data: {first_line(exc, 200)}"
        ) from None
    if not any(np.isfinite(o).any() and np.any(o[np.isfinite(o)]) for outs in ref for o in outs):
        logger.warning("no finite, non-zero float output to measure sensitivities on: the allocation is not weighted")
        return {}  # every probe would read 0, and the allocation give every layer its fewest bits
    out: dict[str, float] = {}
    for p in probes:
        if p.rel_error <= 0:
            out[p.name] = 0.0
            continue
        swapped = {**base, p.name: p.quantized}
        got = [sess.run(None, {**f, **swapped}) for f in sample_feeds]
        out[p.name] = _relative_error(ref, got, masks) / p.rel_error
        logger.debug("sensitivity of %s: %.3g", p.name, out[p.name])
    return out


def _first_samples(feeds: Sequence[dict[str, np.ndarray]], limit: int) -> list[dict[str, np.ndarray]]:
    """Whole feeds until ``limit`` samples (first axis) are covered: a stateful model's feed is one complete call."""
    chosen, seen = [], 0
    for f in feeds:
        chosen.append(f)
        seen += feed_samples(f)
        if seen >= limit:
            break
    return chosen
