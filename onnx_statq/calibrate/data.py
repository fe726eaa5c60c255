"""Calibration inputs: an .npz, a folder of .npz feeds, any iterable of input dicts, or an onnxruntime
CalibrationDataReader; all checked against the model's declared inputs before any work starts.

Verification data (``--verify-data``) comes in the same forms and goes through the same checks; ``what`` names
which of the two an error is about."""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx

from ..errors import CalibrationError, first_line

__all__ = ["DEFAULT_BATCH", "InputSpec", "feed_samples", "load_calibration", "model_inputs"]

logger = logging.getLogger(__name__)

DEFAULT_BATCH = 8
_ELEM = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.INT16: np.int16,
    onnx.TensorProto.UINT16: np.uint16,
    onnx.TensorProto.UINT32: np.uint32,
    onnx.TensorProto.UINT64: np.uint64,
    onnx.TensorProto.BOOL: np.bool_,
}


# inside the model, finite data can still overflow: nothing to fit a layer to, and a bias correction from it wrote
# NaN into the file (every output NaN on any input, exit 0)
NON_FINITE = "the model gives NaN or Inf on the calibration data"


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: Any
    shape: tuple[int | str | None, ...]


def model_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    """The graph inputs that are not initializers (those are what a feed must provide)."""
    inits = {t.name for t in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
        out.append(InputSpec(vi.name, _ELEM.get(tt.elem_type), dims))
    return out


def _check_feed(feed: Mapping[str, Any], specs: list[InputSpec], where: str) -> dict[str, np.ndarray]:
    names = {s.name for s in specs}
    missing, extra = sorted(names - set(feed)), sorted(set(feed) - names)
    if missing or extra:
        raise CalibrationError(f"{where}: missing inputs {missing or '[]'}, unexpected {extra or '[]'}")
    out = {}
    for s in specs:
        arr = np.asarray(feed[s.name])
        if s.dtype is not None and arr.dtype != np.dtype(s.dtype):
            if not np.can_cast(arr.dtype, s.dtype, casting="same_kind"):
                raise CalibrationError(
                    f"{where}: input {s.name} has dtype {arr.dtype}, the model wants {np.dtype(s.dtype)}"
                )
            with np.errstate(over="ignore"):  # float64 beyond float32's range becomes Inf, refused below
                converted = arr.astype(s.dtype)
            narrowed = np.issubdtype(arr.dtype, np.integer) and np.issubdtype(converted.dtype, np.integer)
            if narrowed and not np.array_equal(converted, arr):  # int64 -> int8 wraps (int -> float only rounds)
                raise CalibrationError(f"{where}: input {s.name} holds values outside the range of {converted.dtype}")
            overflowed = np.issubdtype(converted.dtype, np.inexact) and not np.isfinite(converted).all()
            if overflowed and np.isfinite(arr).all():
                raise CalibrationError(f"{where}: input {s.name} holds values outside the range of {converted.dtype}")
            arr = converted
        if np.issubdtype(arr.dtype, np.inexact) and not np.all(np.isfinite(arr)):
            raise CalibrationError(f"{where}: input {s.name} holds NaN or Inf values")
        if s.shape and arr.ndim != len(s.shape):
            raise CalibrationError(f"{where}: input {s.name} has rank {arr.ndim}, the model wants {len(s.shape)}")
        for got, want in zip(arr.shape, s.shape, strict=False):
            if isinstance(want, int) and want > 0 and got != want:
                raise CalibrationError(f"{where}: input {s.name} has shape {arr.shape}, the model wants {s.shape}")
        out[s.name] = arr
    return out


def _read_npz(path: Path, what: str = "calibration") -> dict[str, np.ndarray]:
    """Every array of an .npz archive, or a one-line CalibrationError (not an archive, truncated, pickled objects)."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise CalibrationError(f"{path} is a single .npy array; {what} wants an .npz named like the inputs")
        with loaded as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise CalibrationError(f"cannot read {what} file {path}: {first_line(exc)}") from None


def _from_npz(path: Path, batch: int, what: str, whole: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """Arrays named like the inputs, samples on the first axis, cut into batches."""
    return _batched(_read_npz(path, what), batch, what, str(path), whole)


def _batched(
    arrays: dict[str, Any], batch: int, what: str, where: str, whole: bool = False
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of ``batch`` samples; ``whole``: the model takes exactly that many, so a remainder is left out."""
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    sizes = {a.shape[0] if a.ndim else 0 for a in arrays.values()}
    if len(sizes) != 1 or 0 in sizes:
        raise CalibrationError(f"{where}: every array needs the same number of samples on its first axis")
    n = sizes.pop()
    left = n % batch if whole else 0
    if left and n < batch:
        raise CalibrationError(f"{where}: {n} samples, and the model takes batches of {batch}")
    for start in range(0, n - left, batch):
        yield {k: a[start : start + batch] for k, a in arrays.items()}
    if left:  # reached only when every whole batch was taken (a cap stops the caller before)
        logger.warning(
            "%s: the last %d of %d samples are left out (the model takes batches of %d)", where, left, n, batch
        )


def _fixed_batch(specs: list[InputSpec]) -> int | None:
    """The batch size every input declares on its first axis, if they all fix the same one: an .npz's samples are
    then cut into batches of it (batches of 8 met a model declared [1, 3, 8, 8] with a shape error)."""
    firsts = {spec.shape[0] if spec.shape else None for spec in specs}
    first = firsts.pop() if len(firsts) == 1 else None
    return first if isinstance(first, int) and first > 0 else None


def feed_samples(feed: Mapping[str, np.ndarray]) -> int:
    """The samples a feed holds: the first axis of its first input that has one, else 1 (a feed of scalars is one
    call). The first input alone is not enough: a model may take a scalar first (a sample rate), whose len() fails."""
    return next((int(a.shape[0]) for a in feed.values() if np.ndim(a)), 1)


def _reader_iter(reader: Any) -> Iterator[Mapping[str, Any]]:
    while (item := reader.get_next()) is not None:
        yield item


def load_calibration(
    source: str | Path | Iterable[Mapping[str, Any]] | Any,
    specs: list[InputSpec],
    max_samples: int | None = None,
    batch: int = DEFAULT_BATCH,
    what: str = "calibration",
) -> list[dict[str, np.ndarray]]:
    """Validated feeds, at most ``max_samples`` samples (counted on the first axis of npz batches, else feeds);
    ``what`` ("calibration", "verification") names the data in errors."""
    fixed = _fixed_batch(specs)
    cut = isinstance(source, Mapping) or (isinstance(source, (str, Path)) and Path(source).is_file())
    if fixed is not None and cut:  # whole batches of the size the model takes: a cut one would not fit it
        batch = fixed
        if max_samples:  # samples on the first axis, in whole batches (feeds of a folder or a list are whole)
            max_samples = max(fixed, max_samples - max_samples % fixed)
    if isinstance(source, (str, Path)):
        p = Path(source)
        if p.is_dir():
            files = sorted(p.glob("*.npz"))
            if not files:
                raise CalibrationError(f"{what} folder {p} holds no .npz file")
            items: Iterable[Mapping[str, Any]] = (_read_npz(f, what) for f in files)
        elif p.is_file():
            items = _from_npz(p, batch, what, whole=fixed is not None)
        else:
            raise CalibrationError(f"no such {what} file or folder: {p}")
    elif hasattr(source, "get_next"):
        items = _reader_iter(source)
    elif isinstance(source, Mapping):  # np.load's NpzFile, or a dict of arrays: as an .npz, samples first
        items = _batched(dict(source), batch, what, f"the {what} mapping", whole=fixed is not None)
    elif isinstance(source, np.ndarray) or not isinstance(source, Iterable):
        raise CalibrationError(
            f"{what} data must be an .npz path or folder, a mapping of input names to arrays, an iterable of such "
            f"feeds or a CalibrationDataReader, not {type(source).__name__}"
        )
    else:
        items = cast(Iterable[Mapping[str, Any]], source)
    feeds, count = [], 0
    for i, item in enumerate(items):
        if max_samples is not None and count >= max_samples:
            break
        if not isinstance(item, Mapping):
            raise CalibrationError(f"{what} feed {i} is a {type(item).__name__}, not a dict of input names to arrays")
        feed = _check_feed(item, specs, f"{what} feed {i}")
        samples = feed_samples(feed)
        if samples == 0:  # an empty batch would calibrate on nothing and say nothing
            raise CalibrationError(f"{what} feed {i} holds no sample (its first axis is 0)")
        if max_samples is not None and cut:
            take = min(samples, max_samples - count)
            feed = {k: v[:take] for k, v in feed.items()}
            count += take
        else:
            count += 1
        feeds.append(feed)
    if not feeds:
        raise CalibrationError(f"the {what} data holds no sample")
    return feeds
