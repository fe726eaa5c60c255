"""Digits demo CNN: top-1 accuracy on the held-out split of scikit-learn's 8x8 digits.

A thin wrapper: the model, its data and its metric belong to ``models/digits/`` (see its README),
so this module only adapts ``models/digits/evaluate.py`` to the task interface instead of
re-implementing it. That file is not in a package, hence it is loaded by path.

Measured with the float model ``models/digits/digits_cnn.onnx`` (onnxruntime 1.32): accuracy 0.9889
(534/540), well under 1 s.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import numpy as np

from ..paired import units
from . import _common

DIGITS_DIR = _common.REPO_ROOT / "models" / "digits"
MODEL_PATH = DIGITS_DIR / "digits_cnn.onnx"
CALIB_DATA = DIGITS_DIR / "digits_calib.npz"
CALIB_KEY = "input"  # both the npz array name and the model's input name
CALIB_BATCH = 8


def default_model_path() -> Path:
    """Return the committed float model."""
    return MODEL_PATH


@lru_cache(maxsize=1)
def _evaluator() -> ModuleType:
    """Load ``models/digits/evaluate.py`` by its path, once."""
    path = DIGITS_DIR / "evaluate.py"
    spec = importlib.util.spec_from_file_location("statq_models_digits_evaluate", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise FileNotFoundError(f"digits evaluator not found: {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def evaluate(model_path: str, limit: int | None = None) -> dict:
    """Accuracy on all 540 test digits; ``limit`` is ignored because the full set runs in milliseconds."""
    correct = _evaluator().correct(str(model_path))
    return {"metric": "accuracy", "value": float(correct.mean()), "units": units(correct), "n": int(correct.size)}


def calibration_feeds(n: int) -> list[dict[str, np.ndarray]]:
    """Return the first ``n`` of the 64 calibration digits (training split), ``CALIB_BATCH`` per feed."""
    with np.load(CALIB_DATA) as data:
        x = data[CALIB_KEY][:n].astype(np.float32)
    return [{CALIB_KEY: x[i : i + CALIB_BATCH]} for i in range(0, len(x), CALIB_BATCH)]
