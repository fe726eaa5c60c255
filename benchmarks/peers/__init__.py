"""The quantizers ``benchmarks.bench_peers`` compares: onnx-statq itself and the peer tools, behind one interface.

Every entry of :data:`TOOLS` is a :class:`Tool` whose ``run(src, dst, feeds)`` reads the float model at ``src``,
writes one quantized ONNX file at ``dst`` (nothing else next to it) and returns notes for the JSON. ``feeds`` are the
task's calibration feeds (a list of ``{input name: array}``), used only by calibrated tools. A tool that cannot apply
to a model (no layer of the kind it quantizes) raises :class:`NotApplicable`; any other exception is a failure.

Peer packages (onnxsim, torch for HQQ) are imported inside ``run``, so listing the tools never needs them
(``pip install -e '.[peers]'`` installs them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Feeds = list[dict[str, np.ndarray]]


class NotApplicable(Exception):  # noqa: N818  (a verdict, not an error: the harness reports it as "n/a")
    """The tool has nothing to quantize in this model (e.g. a MatMul-only quantizer on a CNN without MatMul)."""


@dataclass(frozen=True)
class Tool:
    """One quantizer configuration: a row of the comparison table and a point of the plot."""

    key: str  # stable id used in the JSON and on the command line
    label: str  # table row name
    family: str  # plot series (one curve or marker style per family)
    bits: int | None  # nominal bits per weight (None: float)
    calibrated: bool
    run: Callable[[Path, Path, Feeds | None], dict[str, Any]]
    quick: bool = True  # part of --quick runs
    # Tools that write the dequantized weights back as float32 (simulated quantization): the nominal size their
    # codes would take if packed, in bits per weight including scales or codebooks, shown beside the real file size.
    simulated_bits_per_weight: float | None = None
    # Modules the harness imports before starting the clock: import time is not quantization time.
    imports: tuple[str, ...] = ()


def _float(src: Path, dst: Path, feeds: Feeds | None) -> dict[str, Any]:
    """The reference: the float model as it is (the harness measures ``src`` itself for this tool)."""
    return {}


def _registry() -> dict[str, Tool]:
    from . import onnxsim_tools, ort_tools, statq_tools

    tools = [Tool("float", "float", "float", None, False, _float)]
    tools += statq_tools.TOOLS + ort_tools.TOOLS + onnxsim_tools.TOOLS
    return {t.key: t for t in tools}


TOOLS: dict[str, Tool] = _registry()
