"""Small helpers shared by the task evaluators.

They live here so that every task finds the repository, the shared read-only folder and the cache
folder the same way, and builds its onnxruntime session the same way (a difference in session
options between the float and the quantized run would show up as a fake accuracy change).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnxruntime as ort

REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_dir() -> Path:
    """Return the shared read-only folder (models and data that must never be committed).

    ``STATQ_SHARED`` overrides the default ``<repo>/../shared`` so CI or a second checkout can point
    somewhere else without editing code.
    """
    override = os.environ.get("STATQ_SHARED")
    return Path(override).expanduser().resolve() if override else (REPO_ROOT.parent / "shared").resolve()


def package_file(package: str, *parts: str, dist: str | None = None) -> Path:
    """A file shipped inside an installed package, found without importing the package (importing magika or
    rapidocr runs their own setup; a missing package only matters when a task actually runs)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the {dist or package} package is not installed; `pip install 'onnx-statq[bench]'` to run this task"
        )
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)


def cache_dir() -> Path:
    """Return (and create) the gitignored folder where tasks freeze their prepared data."""
    path = REPO_ROOT / "benchmarks" / "results" / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_session(model_path: str | os.PathLike[str]) -> ort.InferenceSession:
    """Open a CPU session with the same options for float and quantized models.

    Full graph optimisation is kept (it is what users run); the fixed options make repeated runs of
    one model give the same numbers.
    """
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])


def save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    """Write a cache file via a temporary name so an interrupted run never leaves a half file."""
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **cast(dict[str, Any], arrays))  # the stubs fear an `allow_pickle` key
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a results file via a temporary name, so that a reader or a crash never sees half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def cpu_model() -> str:
    """The CPU's model name as lscpu reports it ("" where lscpu is missing): benchmarks name their machine."""
    import subprocess

    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return ""
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "")


def machine_base() -> dict[str, object]:
    """The machine facts every benchmark records: CPU, cores, numpy and Python versions."""
    import os
    import platform

    import numpy

    return {
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "lscpu_model_name": cpu_model(),
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }
