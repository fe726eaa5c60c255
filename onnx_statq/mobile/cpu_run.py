"""The CPU step of ``onnx-statq check``: load the model in onnxruntime and run it, on random inputs of the declared
shapes or on the user's (``--data``).

Random inputs give every dynamic dimension a small size, which some real models refuse (silero VAD's reflect padding
needs more than 32 samples per frame), so a failure on them says less than a failure on real inputs: the report
names which inputs ran, and points to ``--data`` when random ones failed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import first_line

__all__ = ["CHECK_MAX_SAMPLES", "CpuRun", "run_cpu"]

CHECK_MAX_SAMPLES = 8  # enough to run every input path once; the check is about running, not about accuracy
RANDOM = "random inputs"


@dataclass
class CpuRun:
    loads: bool = False
    load_error: str | None = None
    runs: bool = False
    run_error: str | None = None
    inputs: dict[str, list[int]] = field(default_factory=dict)  # the first feed's shapes
    inputs_from: str = RANDOM  # "random inputs", or the data the run used


def run_cpu(
    path: Path,
    data: str | os.PathLike[str] | Iterable[Mapping[str, Any]] | None = None,
    into: CpuRun | None = None,
) -> CpuRun:
    """Load ``path`` in onnxruntime's CPU provider and run it on ``data`` (an .npz, a folder of .npz feeds or input
    dicts, checked against the session's inputs: a mismatch raises CalibrationError) or on random inputs; the
    outcome goes into ``into`` (``check``'s result) or a new :class:`CpuRun`."""
    import onnxruntime as ort

    out = into if into is not None else CpuRun()
    out.inputs_from = RANDOM if data is None else _describe(data)
    so = ort.SessionOptions()
    so.log_severity_level = 4  # a failed run is reported in one line; onnxruntime's own ERROR log would add a second
    try:
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        out.load_error = first_line(exc, 300)
        return out
    out.loads = True
    feeds = _given_feeds(sess, data) if data is not None else None
    try:
        if feeds is None:
            from ..verify import random_feeds

            feeds = [random_feeds(sess)]
        out.inputs = {k: list(np.shape(v)) for k, v in feeds[0].items()}
        for feed in feeds:
            sess.run(None, feed)
    except Exception as exc:
        out.run_error = first_line(exc, 300)
        return out
    out.runs = True
    return out


def _describe(data: Any) -> str:
    return str(data) if isinstance(data, (str, os.PathLike)) else "the given feeds"


def _given_feeds(sess: Any, data: Any) -> list[dict[str, np.ndarray]]:
    """The user's feeds, through calibration's loader and checks, against the inputs the session declares (an .ort
    file has no ONNX graph to read them from)."""
    from ..calibrate.data import InputSpec, load_calibration
    from ..verify import NP_TYPES

    specs = [InputSpec(i.name, NP_TYPES.get(i.type), tuple(i.shape)) for i in sess.get_inputs()]
    source = Path(data) if isinstance(data, (str, os.PathLike)) else data
    return load_calibration(source, specs, CHECK_MAX_SAMPLES, what="check --data")
