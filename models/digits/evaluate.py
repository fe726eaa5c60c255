"""Measure digits-classifier accuracy of one or more ONNX models on the held-out test split.

Used both as a CLI (to compare a float model with its quantized variants side by side) and as
an importable module (benchmarks load this file by path and call `accuracy`). The test data is
located next to this file rather than via the cwd so both uses work from any directory.

Usage: python models/digits/evaluate.py MODEL.onnx [MODEL2.onnx ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

TEST_DATA = Path(__file__).resolve().parent / "digits_test.npz"


def load_test_data(path: Path = TEST_DATA) -> tuple[np.ndarray, np.ndarray]:
    """Return (x float32 [N,1,8,8], y int64 [N]); raises FileNotFoundError with a rebuild hint."""
    if not path.is_file():
        raise FileNotFoundError(f"test data not found: {path} (run models/digits/train.py to rebuild it)")
    with np.load(path) as data:
        return data["x"].astype(np.float32), data["y"].astype(np.int64)


def accuracy(model_path: str) -> float:
    """Top-1 accuracy of the model at `model_path` on digits_test.npz, run with onnxruntime CPU."""
    return float(correct(model_path).mean())


def correct(model_path: str) -> np.ndarray:
    """Per test image, whether the model at `model_path` classifies it right (the benchmarks compare two models
    image by image).

    The input/output names are read from the session instead of assuming "input"/"logits", so
    graph passes that rename tensors can still be evaluated.
    """
    if not Path(model_path).is_file():
        raise FileNotFoundError(f"model not found: {model_path}")
    x, y = load_test_data()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # Keep CLI output to one line per model.
    sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    logits = sess.run([sess.get_outputs()[0].name], {sess.get_inputs()[0].name: x})[0]
    return np.asarray(logits).argmax(axis=1) == y


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit code (0 ok, 1 missing file)."""
    parser = argparse.ArgumentParser(description="Digits test-set accuracy of ONNX models.")
    parser.add_argument("models", nargs="+", help="paths to .onnx models")
    args = parser.parse_args(argv)
    missing = [p for p in [*args.models, str(TEST_DATA)] if not Path(p).is_file()]
    if missing:  # Check up front so a typo fails fast instead of after the other models ran.
        print(f"error: file not found: {', '.join(missing)}", file=sys.stderr)
        return 1
    for path in args.models:
        print(f"{path}\t{accuracy(path):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
