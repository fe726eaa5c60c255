"""Run the float and the quantized model on the same random inputs and measure output SQNR.

The only module besides :mod:`onnx_statq.calibrate` that runs onnxruntime; the graph pass never does.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

__all__ = ["DYNAMIC_DIM", "compare", "random_feeds"]

DYNAMIC_DIM = 2
_NP = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _dynamic(axis: int, rank: int, batch: int) -> int:
    """Size for a symbolic dim: the batch stays small; an image side must survive the strides of a detector."""
    if axis == 0:
        return batch
    return 64 if rank == 4 else 16


def random_feeds(sess: ort.InferenceSession, seed: int = 0, dynamic_dim: int = DYNAMIC_DIM) -> dict[str, np.ndarray]:
    """Inputs of the declared shapes; symbolic dims get ``dynamic_dim``; integer inputs stay small (token ids)."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for i in sess.get_inputs():
        shape = [
            d if isinstance(d, int) and d > 0 else _dynamic(j, len(i.shape), dynamic_dim) for j, d in enumerate(i.shape)
        ]
        dtype = _NP.get(i.type)
        if dtype is None:
            raise ValueError(f"input {i.name} has type {i.type}, which verification cannot generate")
        if np.issubdtype(dtype, np.floating):
            feeds[i.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_:
            feeds[i.name] = np.ones(shape, dtype=bool)
        else:
            # ids index tables of unknown size (a token-type table has 2 rows): 0 and 1 are always valid
            feeds[i.name] = (np.ones(shape) if "mask" in i.name else rng.integers(0, 2, size=shape)).astype(dtype)
    return feeds


def compare(float_path: Path, quant_path: Path, seed: int = 0) -> dict[str, Any]:
    """Output SQNR (dB) of the quantized model against the float one, per output and worst.

    If the float model itself cannot run on generated inputs (inputs with meaning, such as ids into a table), the
    check is reported as skipped; if only the quantized model fails, that is a real failure and is raised.
    """
    ref, q = _session(float_path), _session(quant_path)
    feeds = random_feeds(ref, seed)
    try:
        a = ref.run(None, feeds)
    except Exception as exc:
        return {"skipped": f"the float model fails on generated inputs: {str(exc).splitlines()[0][:200]}"}
    b = q.run(None, feeds)
    per = {}
    for meta, x, y in zip(ref.get_outputs(), a, b, strict=False):
        x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
        noise = float(np.sum((x64 - y64) ** 2))
        signal = float(np.sum(x64**2))
        per[meta.name] = math.inf if noise == 0 else (10 * math.log10(signal / noise) if signal > 0 else -math.inf)
    return {"outputs": per, "min_sqnr_db": min(per.values()) if per else math.inf, "inputs": list(feeds)}
