"""PP-OCR mobile v2.0 text direction classifier (0 or 180 degrees) on synthetic text lines.

Why this task: the direction classifier shipped in the rapidocr wheel is a small MobileNetV3-style
CNN (0.59 MB: 53 Conv nodes, depthwise and pointwise, each followed by an unfolded
BatchNormalization node, hard-swish, squeeze and excitation, a MatMul + softmax 2-way head; every
weight is stored in a Constant node, none as an initializer). Small CNNs with few weights per layer
are the kind where low-bit codebooks hurt most, and half of its weights are below the pass's default
minimum size (1024 elements) and stay float, so it is a useful "small CNN" check beside the larger
PP-OCR models.

Data: ``N_EVAL`` lines, each a seeded token prefix (1 token up to the whole line) of a line from
``ppocr_rec.eval_lines`` with this module's own seed, rendered with ``ppocr_rec.render`` (seeded
DejaVu face, size 20-40 px, margins); exactly half of them, chosen by a seeded shuffle, are rotated
by 180 degrees (``cv2.rotate(img, cv2.ROTATE_180)``). Calibration lines come from another text
source, ``ppocr_rec.calib_lines`` (the docstrings of Python's built-in names), with another seed, half
of them rotated too.

Preprocessing follows rapidocr 3.10 (``ch_ppocr_cls/main.py``, ``TextClassifier.resize_norm_img``
with the PP-OCRv4 shape 3 x 48 x 192): resize with ``cv2.resize`` (bilinear) to height 48 and width
``min(192, ceil(48 * w / h))``, scale by ``(x / 255 - 0.5) / 0.5``, right-pad with zeros to width 192,
NCHW, ``BATCH`` lines per run (rapidocr's ``cls_batch_num``; every line is padded to the same width,
so batching does not change the outputs).

Metrics: ``value`` is the accuracy of the argmax direction (labels ``["0", "180"]``). Secondary:
``pipeline_accuracy``, the fraction of lines that end up upright after rapidocr's rule (a line is
turned only when the 180 class wins with probability > 0.9, ``cls_thresh``), and the accuracy on
each half (``accuracy_0``, ``accuracy_180``).

Measured with the float model (rapidocr 3.10.0, onnxruntime 1.32, Pillow 13.0, DejaVu fonts) on n=400
lines: accuracy 0.9725, pipeline accuracy 0.9675, accuracy_0 0.9700, accuracy_180 0.9750, in about
3 s on the shared 2-core machine. rapidocr's own ``TextClassifier`` on the same images gave the same
label and the same probability for every line.
"""

from __future__ import annotations

import math
import random
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..paired import units
from . import _common, ppocr_rec

N_EVAL = 400
EVAL_SEED = 515151
CALIB_SEED = 3131
BATCH = 6  # rapidocr's cls_batch_num
CLS_SHAPE = (3, 48, 192)  # rapidocr's CLS_SHAPE_BY_OCR_VERSION for PP-OCRv4, the version its config names
CLS_THRESH = 0.9  # rapidocr's cls_thresh: a line is turned only above this probability of "180"
LABELS = ("0", "180")
INPUT_NAME = "x"


def default_model_path() -> Path:
    """Locate ``models/ch_ppocr_mobile_v2.0_cls_mobile.onnx`` in the installed rapidocr package without importing it."""
    return _common.package_file("rapidocr", "models", "ch_ppocr_mobile_v2.0_cls_mobile.onnx")


def make_lines(texts: list[str], seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Render a token prefix of each text, then rotate a seeded half by 180 degrees; (images, labels 0/1)."""
    import cv2

    rng = random.Random(seed)
    images = []
    for text in texts:
        tokens = text.split()
        images.append(ppocr_rec.render(" ".join(tokens[: rng.randint(1, len(tokens))]), rng))
    labels = [i % 2 for i in range(len(texts))]
    rng.shuffle(labels)
    images = [cv2.rotate(img, cv2.ROTATE_180) if lab else img for img, lab in zip(images, labels, strict=True)]
    return images, np.array(labels, dtype=np.int64)


def preprocess(img: np.ndarray) -> np.ndarray:
    """rapidocr's ``TextClassifier.resize_norm_img`` for a 3-channel image: CHW float32, zero-padded."""
    import cv2

    c, h_out, w_out = CLS_SHAPE
    h, w = img.shape[:2]
    resized_w = min(w_out, math.ceil(h_out * w / float(h)))
    resized = cv2.resize(img, (resized_w, h_out), interpolation=cv2.INTER_LINEAR).astype("float32")
    out = np.zeros((c, h_out, w_out), dtype=np.float32)
    out[:, :, :resized_w] = (resized.transpose((2, 0, 1)) / 255 - 0.5) / 0.5
    return out


@lru_cache(maxsize=1)
def _eval_data() -> tuple[np.ndarray, np.ndarray]:
    """Render and preprocess the evaluation lines once per process: (N x 3 x 48 x 192 inputs, labels)."""
    images, labels = make_lines(ppocr_rec.eval_lines(N_EVAL, EVAL_SEED), EVAL_SEED + 1)
    return np.stack([preprocess(img) for img in images]), labels


def evaluate(model_path: str, limit: int | None = None) -> dict:
    """Direction accuracy (argmax) over the evaluation lines, plus rapidocr's thresholded outcome."""
    inputs, labels = _eval_data()
    inputs, labels = inputs[:limit], labels[:limit]
    sess = _common.make_session(model_path)
    probs = np.concatenate(
        [sess.run(None, {INPUT_NAME: inputs[i : i + BATCH]})[0] for i in range(0, len(inputs), BATCH)]
    )
    pred = probs.argmax(axis=1)
    turned = (pred == 1) & (probs[:, 1] > CLS_THRESH)
    upright = np.where(labels == 1, turned, ~turned)
    return {
        "metric": "accuracy",
        "value": float(np.mean(pred == labels)),
        "units": units(pred == labels),
        "pipeline_accuracy": float(np.mean(upright)),
        "accuracy_0": float(np.mean(pred[labels == 0] == 0)),
        "accuracy_180": float(np.mean(pred[labels == 1] == 1)),
        "fonts": "dejavu" if ppocr_rec.font_files()[1] else "fallback",
        "n": len(labels),
    }


def calibration_feeds(n: int, seed: int = CALIB_SEED) -> list[dict[str, np.ndarray]]:
    """Render ``n`` calibration lines from the built-ins' docstrings (half rotated), ``BATCH`` per feed; ``seed``
    renders them differently (fonts, sizes, which half is rotated: ``bench_draws``)."""
    images, _ = make_lines(ppocr_rec.calib_lines(n), seed)
    x = np.stack([preprocess(img) for img in images])
    return [{INPUT_NAME: x[i : i + BATCH]} for i in range(0, len(x), BATCH)]
