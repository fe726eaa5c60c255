"""Safe model loading and atomic saving.

Loading refuses external data that would be read from outside the model's folder; saving writes a temp file in the
destination folder and renames it, so an interrupted or failed run never leaves a partial output behind.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError, EncodeError

from .errors import ExternalDataError, ModelLoadError, OutputError, first_line
from .lazy import check_ranges

__all__ = [
    "TWO_GB",
    "ZipSizer",
    "load_model",
    "output_target",
    "publish",
    "read_external",
    "save_model",
    "staging_dir",
    "under_2gb",
    "write_text_atomic",
    "zipped_size",
]

TWO_GB = 2**31 - 1


def _external_locations(model: onnx.ModelProto) -> list[str]:
    out = []
    for t in onnx.external_data_helper._get_all_tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            out.append(info.get("location", ""))
    return out


def _check_external(model: onnx.ModelProto, folder: Path) -> None:
    root = folder.resolve()
    for loc in _external_locations(model):
        p = Path(loc)
        if not loc or p.is_absolute() or ".." in p.parts:
            raise ExternalDataError(f"external data location {loc!r} is not a plain path inside the model's folder")
        if (folder / p).is_symlink():
            raise ExternalDataError(f"external data {loc!r} is a symbolic link; refusing to follow it")
        resolved = (folder / p).resolve()
        if root not in resolved.parents and resolved != root:
            raise ExternalDataError(f"external data {loc!r} resolves outside the model's folder (symlink?)")
        if not resolved.is_file():
            raise ExternalDataError(f"external data file {loc!r} is missing next to the model")


def read_external(model: onnx.ModelProto, folder: Path, lazy: bool, what: str) -> None:
    """Check the model's external data in ``folder`` (plain files inside it, byte ranges that fit) and, unless
    ``lazy``, read it into the model; ``lazy`` leaves it for ``StatqPass(...)(model, base_dir=folder)``."""
    _check_external(model, folder)
    try:
        if lazy:
            check_ranges(model, folder)
        else:
            onnx.load_external_data_for_model(model, str(folder))
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        raise ExternalDataError(f"cannot read external data of {what}: {exc}") from None


def under_2gb(model: onnx.ModelProto) -> bool:
    """Whether the model serializes to one protobuf (< 2 GB); ``ByteSize`` itself fails on a larger one."""
    try:
        return model.ByteSize() < TWO_GB
    except EncodeError:
        return False


def load_model(
    path: str | os.PathLike[str], data_files: list[str] | None = None, *, lazy: bool = False
) -> onnx.ModelProto:
    """Load and check a model file, with its external data, or raise a one-line typed error.

    ``data_files``, if given, receives the external data file names (they are no longer visible once loaded).
    ``lazy`` leaves external tensors in their files (their byte ranges checked): hand the model's folder to
    ``StatqPass(...)(model, base_dir=folder)``, which reads them one at a time (see :mod:`onnx_statq.lazy`).
    """
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"no such model file: {p}")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise ModelLoadError(f"{p} is not a readable ONNX model ({type(exc).__name__})") from None
    if not model.HasField("graph") or not model.opset_import:
        raise ModelLoadError(f"{p} is not an ONNX model (no graph or opset)")
    if data_files is not None:
        data_files.extend(sorted(set(_external_locations(model))))
    external = bool(_external_locations(model))
    read_external(model, p.parent, lazy, str(p))
    try:
        if not (lazy and external) and under_2gb(model):
            onnx.checker.check_model(model)
        else:
            onnx.checker.check_model(str(p))
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise ModelLoadError(f"{p} fails the ONNX checker: {first_line(exc)}") from None
    return model


def output_target(path: str | os.PathLike[str]) -> Path:
    """Where an output file goes: through a symbolic link to its target, which it replaces (the link stays, as for
    the JSON report). An existing output that is a folder, a pipe or a device is refused: the finished file is
    renamed onto its path, which would replace the link, pipe or device itself (as root, ``-o /dev/null`` deleted
    the device node)."""
    target = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    if os.path.isdir(target):  # os.path: False, not OSError, for a name too long
        raise OutputError(f"output {path} is a directory")
    if os.path.exists(target) and not os.path.isfile(target):
        raise OutputError(f"output {path} is not a regular file (a pipe or a device); give a file path")
    return target


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str]) -> list[Path]:
    """Write atomically; models over 2 GB go with external data in ``<name>.data``. Returns the files written."""
    out = output_target(path)
    with staging_dir(out) as tmpdir:
        try:
            return publish([(f, out.parent / f.name) for f in _save_into(model, tmpdir, out.name)])
        except OSError as exc:
            raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def staging_dir(out: Path, prefix: str = ".statq-") -> Iterator[Path]:
    """A temporary folder beside ``out``, removed afterwards whatever happens.

    Beside, not in /tmp: the same filesystem, so :func:`publish`'s rename is atomic and a failed or interrupted run
    leaves no partial output behind."""
    if not os.path.isdir(out.parent):
        raise OutputError(f"output folder {out.parent} does not exist")
    try:
        tmpdir = Path(tempfile.mkdtemp(prefix=prefix, dir=out.parent))
    except OSError as exc:
        raise OutputError(f"cannot write to {out.parent}: {exc.strerror}") from None
    try:
        yield tmpdir
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def publish(staged: list[tuple[Path, Path]]) -> list[Path]:
    """Rename each staged file onto its final path; returns the final paths."""
    for tmp, final in staged:
        os.replace(tmp, final)
    return [final for _, final in staged]


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text output (a JSON report) as the model is written: staged beside it, then renamed, so a failure
    part way never leaves half a file where a script would read it. Through a symbolic link to its target (whose
    permissions it keeps); straight into what is not a regular file (``/dev/stdout``, a pipe), which cannot be
    renamed over."""
    try:
        if path.exists() and not path.is_file():  # both follow links: /dev/stdout's target is a pipe
            path.write_text(text, encoding="utf-8")
            return
        target = Path(os.path.realpath(path))
        with staging_dir(target) as tmpdir:
            staged = tmpdir / target.name
            staged.write_text(text, encoding="utf-8")
            if target.exists():
                shutil.copymode(target, staged)
            publish([(staged, target)])
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


def _save_into(model: onnx.ModelProto, folder: Path, name: str) -> list[Path]:
    target = folder / name
    if under_2gb(model) and not _external_locations(model):
        target.write_bytes(model.SerializeToString())
        return [target]
    data = f"{name}.data"
    onnx.save_model(
        model, str(target), save_as_external_data=True, all_tensors_to_one_file=True, location=data, size_threshold=1024
    )
    return [target, folder / data]


def zipped_size(paths: list[Path], cancel: threading.Event | None = None) -> int:
    """Bytes after deflate at zip's default level, as a download or an APK would carry the file.

    Level 9 measured 3x slower than level 6 on MiniLM for a size within 0.3%, and it dominated the run time. The
    archive goes to a sink that only counts (zipfile streams each file in small blocks), so measuring a model of
    several GB takes neither memory nor disk.
    """
    sink = _CountingSink(cancel)
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as z:
        for p in paths:
            z.write(p, arcname=p.name)
    return sink.size


class ZipSizer:
    """:func:`zipped_size` on a background thread: started as soon as the input is known, the deflate of a large
    input (about 90 s per GB) overlaps the pass instead of following it. :meth:`cancel` stops it within a block."""

    def __init__(self, paths: list[Path]) -> None:
        self._cancel = threading.Event()
        self._size: int | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(list(paths),), name="statq-zipped-size", daemon=True)
        self._thread.start()

    def _run(self, paths: list[Path]) -> None:
        try:
            self._size = zipped_size(paths, self._cancel)
        except BaseException as exc:  # handed to result(), in the caller's thread
            self._error = exc

    def result(self) -> int:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._size is not None
        return self._size

    def cancel(self) -> None:
        self._cancel.set()


class _CancelledError(Exception):
    pass


class _CountingSink(io.RawIOBase):
    """A seekable write-only file that keeps no data: zipfile writes it exactly as it would a real file (it
    seeks back to patch each local header), and its final extent is the archive's size."""

    def __init__(self, cancel: threading.Event | None = None) -> None:
        super().__init__()
        self.pos = 0
        self.size = 0
        self.cancel = cancel

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        if self.cancel is not None and self.cancel.is_set():
            raise _CancelledError
        n = memoryview(b).nbytes
        self.pos += n
        self.size = max(self.size, self.pos)
        return n

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.size}[whence]
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos
