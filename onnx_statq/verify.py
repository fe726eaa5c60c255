"""Run the float and the quantized model on the same inputs (random, or the user's) and measure output SQNR.

Besides :mod:`onnx_statq.calibrate` and :mod:`onnx_statq.mobile` (the ORT-format conversion and ``check``), the
only module that runs onnxruntime; the graph pass never does.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from .errors import CalibrationError, first_line

__all__ = [
    "DYNAMIC_DIM",
    "FOLD_LIMIT",
    "MAX_FEED_ELEMENTS",
    "NP_TYPES",
    "CannotVerifyError",
    "compare",
    "model_bytes",
    "random_feeds",
]

DYNAMIC_DIM = 2
MAX_FEED_ELEMENTS = 1 << 26  # 256 MB of float32 over all inputs: past this, random inputs are not generated
NP_TYPES = {  # onnxruntime's input type names
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


class CannotVerifyError(ValueError):
    """The float model cannot be run on generated inputs (a type or size random inputs cannot be made for)."""


FOLD_LIMIT = 1 << 28  # float model bytes past which the check does not let onnxruntime fold the decode


def _session(path: Path, fold: bool = True) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # a failing run raises, and becomes one line of ours: no log line of onnxruntime's
    if fold:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    opts.enable_cpu_mem_arena = False  # the run-time decode's buffers go back to the system after the run
    return ort.InferenceSession(
        str(path), opts, providers=["CPUExecutionProvider"], disabled_optimizers=["ConstantFolding"]
    )


def model_bytes(path: Path) -> int:
    """Bytes of a model file and of the external data its tensors reference (read without loading the data)."""
    size = path.stat().st_size
    if size > FOLD_LIMIT:  # one protobuf this large holds its weights itself: no need to parse it
        return size
    model = onnx.load(str(path), load_external_data=False)
    files = {
        e.value
        for t in onnx.external_data_helper._get_all_tensors(model)
        if t.data_location == onnx.TensorProto.EXTERNAL
        for e in t.external_data
        if e.key == "location"
    }
    return size + sum((path.parent / f).stat().st_size for f in files if (path.parent / f).is_file())


def _dynamic(axis: int, rank: int, batch: int) -> int:
    """Size for a symbolic dim: the batch stays small; an image side must survive the strides of a detector."""
    if axis == 0:
        return batch
    return 64 if rank == 4 else 16


def random_feeds(sess: ort.InferenceSession, seed: int = 0, dynamic_dim: int = DYNAMIC_DIM) -> dict[str, np.ndarray]:
    """Inputs of the declared shapes; symbolic dims get ``dynamic_dim``; integer inputs stay small (token ids).

    Raises :class:`CannotVerifyError` for an input type that cannot be generated, or declared shapes of more than
    ``MAX_FEED_ELEMENTS`` elements in all (a hostile model can declare 10^12).
    """
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    shapes = {}
    for i in sess.get_inputs():
        shapes[i.name] = [
            d if isinstance(d, int) and d > 0 else _dynamic(j, len(i.shape), dynamic_dim) for j, d in enumerate(i.shape)
        ]
        if NP_TYPES.get(i.type) is None:
            raise CannotVerifyError(f"input {i.name} has type {i.type}, which verification cannot generate")
    total = sum(math.prod(s) for s in shapes.values())  # Python ints: no overflow for absurd dims
    if total > MAX_FEED_ELEMENTS:
        raise CannotVerifyError(
            f"the inputs' declared shapes hold {min(total, 10**300):.3g} elements, too many to generate"
        )
    for i in sess.get_inputs():
        shape, dtype = shapes[i.name], NP_TYPES[i.type]
        if np.issubdtype(dtype, np.floating):
            feeds[i.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_:
            feeds[i.name] = np.ones(shape, dtype=bool)
        else:
            # ids index tables of unknown size (a token-type table has 2 rows): 0 and 1 are always valid
            feeds[i.name] = (np.ones(shape) if "mask" in i.name else rng.integers(0, 2, size=shape)).astype(dtype)
    return feeds


def compare(
    float_path: Path,
    quant_path: Path,
    seed: int = 0,
    fold: bool | None = None,
    feeds: list[dict[str, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Output SQNR (dB) of the quantized model against the float one, per output and worst, on ``feeds`` (the
    user's verification data, already checked against the model's inputs) or else on random inputs.

    Random inputs say whether the output runs and stays close, not how close it stays on real data: on noise a
    classifier's or a CTC decoder's scores sit near ties (measured in the README). Float outputs with a
    last axis of at least 2 also get the share of positions whose argmax over that axis agrees
    (``argmax_agreement``): for class scores, how often the prediction is kept; for other outputs, nothing.

    If the float model itself cannot be loaded by onnxruntime, or run on generated inputs (inputs with meaning, such
    as ids into a table; types or sizes that cannot be generated), the check is reported as skipped; the float model
    failing on the user's data is a :class:`CalibrationError`; if only the quantized model fails, that is a real
    failure and is raised.

    The two sessions live one after the other, so the check holds one model's weights at a time (and the float
    outputs on every feed). ``fold=None`` lets onnxruntime fold the decode at session creation, as users run it,
    unless the float model is over ``FOLD_LIMIT`` bytes: folding the decode of a large model takes several times its
    weights in memory at once (about 8x measured), so both sessions then run without constant folding, the quantized
    one decoding at run time (bit-exact all the same); the result says so in ``note``.
    """
    if fold is None:
        try:
            fold = model_bytes(Path(float_path)) <= FOLD_LIMIT
        except Exception:  # a size estimate only: the session below reports what really fails
            fold = True
    try:
        ref = _session(float_path, fold)
    except Exception as exc:
        return {"skipped": f"onnxruntime cannot load the float model: {first_line(exc, 200)}"}
    given = feeds is not None
    if feeds is None:
        try:
            feeds = [random_feeds(ref, seed)]
        except CannotVerifyError as exc:
            return {"skipped": str(exc), "random": True}
    try:
        expected = [ref.run(None, feed) for feed in feeds]
    except Exception as exc:
        if given:
            raise CalibrationError(f"the float model fails on the verification data: {first_line(exc, 200)}") from None
        why = "the float model fails on generated inputs (dynamic dims get small sizes)"
        return {"skipped": f"{why}: {first_line(exc, 200)}", "random": True}
    names = [meta.name for meta in ref.get_outputs()]
    del ref  # frees the float weights before the quantized model loads
    quant = _session(quant_path, fold)
    stats = {name: _OutputStats() for name in names}
    for feed, a in zip(feeds, expected, strict=True):
        for name, x, y in zip(names, a, quant.run(None, feed), strict=False):
            stats[name].add(x, y)
    per = {name: st.sqnr_db() for name, st in stats.items()}
    result: dict[str, Any] = {
        "outputs": per,
        "min_sqnr_db": min(per.values()) if per else math.inf,
        "inputs": list(feeds[0]),
        "source": "data" if given else "random",
        "feeds": len(feeds),
    }
    agreement = {name: st.agreement() for name, st in stats.items() if st.positions}
    if agreement:
        result["argmax_agreement"] = agreement
    if not fold:
        result["note"] = (
            f"checked without onnxruntime's constant folding: the float model is over {FOLD_LIMIT >> 20} MB, and "
            "folding the decode at session creation takes several times the weights in memory; the quantized "
            "model decoded its weights at run time instead"
        )
    return result


class _OutputStats:
    """One output's signal and noise power and argmax agreement, summed over feeds (shapes may differ per feed)."""

    def __init__(self) -> None:
        self.signal = self.noise = 0.0
        self.numeric = True
        self.same = True
        self.agree = self.positions = 0

    def add(self, x: Any, y: Any) -> None:
        xa, ya = np.asarray(x), np.asarray(y)
        if xa.dtype.kind not in "biuf" or ya.dtype.kind not in "biuf":
            # strings, a sequence of maps: equal or not
            self.numeric = False
            self.same = self.same and xa.shape == ya.shape and xa.ravel().tolist() == ya.ravel().tolist()
            return
        x64, y64 = xa.astype(np.float64), ya.astype(np.float64)
        if x64.shape == y64.shape and not np.isfinite(x64).all():  # the float model itself overflowed there
            kept = np.isfinite(x64)
            x64, y64 = x64[kept], y64[kept]
        if not np.isfinite(y64).all():  # the quantized one did where the float one did not: as bad as it gets
            self.noise = math.inf
            return
        self.signal += float(np.sum(x64**2))
        self.noise += float(np.sum((x64 - y64) ** 2))
        if xa.dtype.kind == "f" and xa.ndim >= 2 and xa.shape[-1] >= 2 and xa.shape == ya.shape and xa.size:
            self.agree += int(np.count_nonzero(np.argmax(xa, axis=-1) == np.argmax(ya, axis=-1)))
            self.positions += xa.size // xa.shape[-1]

    def sqnr_db(self) -> float:
        if not self.numeric:
            return math.inf if self.same else -math.inf
        if self.noise == 0:
            return math.inf
        return 10 * math.log10(self.signal / self.noise) if self.signal > 0 else -math.inf

    def agreement(self) -> float:
        return self.agree / self.positions
