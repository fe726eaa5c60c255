"""PP-OCRv6 small text detection on synthetic pages whose line boxes are known.

Why this task: the detector shipped in the rapidocr wheel is a real convolutional segmentation
network (83 Conv and 2 ConvTranspose nodes, BatchNormalization already folded into the convolutions,
hard-sigmoid gates, a few GELU / mean-normalisation blocks, 9.9 MB) whose output is a per-pixel text
probability map; boxes are cut from that map at a fixed threshold, so small numeric drifts move box
edges or split and merge lines. It is the "detector" kind of model next to the recognizer of
``ppocr_rec``.

Data: ``N_EVAL`` white pages of ``PAGE_W`` x ``PAGE_H`` pixels. Each page holds several horizontal
text lines drawn one under the other with ``ppocr_rec.render`` (seeded DejaVu face, size 20-40 px)
at seeded positions, with a seeded gap of 0.4 to 1.4 line heights between lines. A line is a prefix
(1 token up to all of them) of a line from ``ppocr_rec.eval_lines`` with this module's own seed,
shortened further until it fits the page width. Calibration pages use a different seed and another
text source: ``ppocr_rec.calib_lines`` (the docstrings of Python's built-in names).

Ground truth: the box of a line is the bounding box of its ink (pixels darker than 128) widened on
every side by ``GT_PAD`` (0.2) times the ink height. The margin is the labelling convention the model
was trained on (PP-OCR / ICDAR boxes enclose the glyphs with some room, and DB's unclip step restores
it): on the first 12 pages the float model's boxes lay a median 0.185-0.22 ink heights outside the
ink on each side. Without the margin, single short words (ink 25 x 16 px with a box 6 px larger per
side) fall under IoU 0.5 although they are found: float F1 was 0.93 and mean IoU 0.69 on 20 pages.

Pre- and post-processing follow rapidocr 3.10 (``ch_ppocr_det/utils.py``, config ``Det``):
``DetPreProcess`` with ``limit_type="min"`` and ``limit_side_len=736`` (so a 640 x 640 page becomes
736 x 736: the shorter side is scaled up to 736, both sides rounded to a multiple of 32,
``cv2.resize`` bilinear), ``(x / 255 - 0.5) / 0.5``, NCHW. ``DBPostProcess`` is reproduced in an
axis-aligned form, which is what it computes for horizontal lines: probability map > 0.3, dilation
with a 2 x 2 kernel, 8-connected components; per component the box through the outermost pixel
centres (``minAreaRect`` of the contour) is dropped if its short side is < 3 or its mean probability
("fast" score) is < 0.5, then expanded on every side by ``area * 1.6 / perimeter`` (the unclip
distance), dropped if the short side is then < 5, scaled back to page coordinates, rounded and
clipped, and dropped if a side is <= 3 pixels.

Metrics: detected boxes are matched one to one with ground-truth boxes, greedily by decreasing IoU,
a pair counting when IoU >= 0.5. ``value`` is the F1 over all pages (micro: matched pairs over all
detections and over all ground-truth lines); precision, recall and the mean IoU of matched pairs are
secondary fields.

Measured with the float model (rapidocr 3.10.0, onnxruntime 1.32, Pillow 13.0, DejaVu fonts) on
n=100 pages (1221 lines): F1 1.0000 (precision 1.0000, recall 1.0000), mean IoU 0.8866. On the first
6 pages rapidocr's own ``TextDetector`` found the same boxes (73 of 73, same count per page), their
corners within 4 pixels of ours (mostly 0-1: rapidocr offsets polygons in integer coordinates with
pyclipper and takes ``minAreaRect``s). 100 pages took 187 s on the shared 2-core machine (load 8).
"""

from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..paired import units
from . import _common, ppocr_rec

N_EVAL = 100
EVAL_SEED = 4242
CALIB_SEED = 9090
BATCH = 2  # pages per onnxruntime run (all pages have one size); batching does not change the boxes
PAGE_W, PAGE_H = 640, 640
PAGE_MARGIN = 16
INK_LEVEL = 128  # a pixel darker than this is ink
GT_PAD = 0.2  # ground-truth margin around the ink, per side, as a fraction of the ink height (see the docstring)
LIMIT_SIDE_LEN, LIMIT_TYPE = 736, "min"  # rapidocr config Det
THRESH, BOX_THRESH, UNCLIP_RATIO, MIN_SIZE = 0.3, 0.5, 1.6, 3
MATCH_IOU = 0.5
INPUT_NAME = "x"


def default_model_path() -> Path:
    """Locate ``models/PP-OCRv6_det_small.onnx`` in the installed rapidocr package without importing it."""
    return _common.package_file("rapidocr", "models", "PP-OCRv6_det_small.onnx")


def _ink_box(img: np.ndarray) -> tuple[int, int, int, int] | None:
    """Inclusive-exclusive (x0, y0, x1, y1) of the pixels darker than ``INK_LEVEL``; None for a blank image."""
    ys, xs = np.nonzero(img[:, :, 0] < INK_LEVEL)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def render_page(texts: list[str], rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
    """Draw lines top to bottom on a white page; returns the HxWx3 uint8 page and (k, 4) ground-truth boxes.

    Lines are taken from ``texts`` in order until the page is full; each one is cut to a random token
    prefix, then shortened until it fits the page width. Boxes are (x0, y0, x1, y1), x1/y1 exclusive.
    """
    page = np.full((PAGE_H, PAGE_W, 3), 255, dtype=np.uint8)
    boxes: list[tuple[int, int, int, int]] = []
    y = rng.randint(PAGE_MARGIN, 3 * PAGE_MARGIN)
    for text in texts:
        tokens = text.split()
        tokens = tokens[: rng.randint(1, len(tokens))]
        while True:
            line = ppocr_rec.render(" ".join(tokens), rng)
            ink = _ink_box(line)
            if ink is None or ink[2] - ink[0] <= PAGE_W - 2 * PAGE_MARGIN or len(tokens) == 1:
                break
            tokens = tokens[:-1]
        if ink is None or ink[2] - ink[0] > PAGE_W - 2 * PAGE_MARGIN:
            continue  # a single token wider than the page: skip it
        crop = line[ink[1] : ink[3], ink[0] : ink[2]]
        h, w = crop.shape[:2]
        if y + h > PAGE_H - PAGE_MARGIN:
            break
        x = rng.randint(PAGE_MARGIN, PAGE_W - PAGE_MARGIN - w)
        region = page[y : y + h, x : x + w]
        np.minimum(region, crop, out=region)
        pad = round(GT_PAD * h)
        boxes.append((max(x - pad, 0), max(y - pad, 0), min(x + w + pad, PAGE_W), min(y + h + pad, PAGE_H)))
        y += h + rng.randint(int(0.4 * h), int(1.4 * h))
    return page, np.array(boxes, dtype=np.int64).reshape(-1, 4)


def make_pages(n: int, texts: list[str], seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Render ``n`` pages consuming ``texts`` in order (cycled if they run out)."""
    rng = random.Random(seed)
    pages, truths, pos = [], [], 0
    for _ in range(n):
        window = [texts[(pos + i) % len(texts)] for i in range(40)]  # more than a page can hold
        page, boxes = render_page(window, rng)
        pos += len(boxes)
        pages.append(page)
        truths.append(boxes)
    return pages, truths


def preprocess(img: np.ndarray) -> np.ndarray:
    """rapidocr's ``DetPreProcess``: resize (limit ``min`` 736, multiples of 32), normalise, CHW float32."""
    import cv2

    h, w = img.shape[:2]
    ratio = 1.0
    if LIMIT_TYPE == "min" and min(h, w) < LIMIT_SIDE_LEN:
        ratio = LIMIT_SIDE_LEN / (h if h < w else w)
    elif LIMIT_TYPE == "max" and max(h, w) > LIMIT_SIDE_LEN:
        ratio = LIMIT_SIDE_LEN / (h if h > w else w)
    resize_h = round(int(h * ratio) / 32) * 32
    resize_w = round(int(w * ratio) / 32) * 32
    resized = cv2.resize(img, (resize_w, resize_h))
    return ((resized.astype("float32") / 255.0 - 0.5) / 0.5).transpose((2, 0, 1)).astype(np.float32)


def db_boxes(prob: np.ndarray, dest_h: int, dest_w: int) -> np.ndarray:
    """DB post-processing of one HxW probability map, axis-aligned; (k, 4) float boxes in page pixels.

    The boxes are (x0, y0, x1, y1) with rapidocr's corner convention: the corners it outputs are pixel
    coordinates (x1/y1 are the last covered pixel's coordinate), so ``x1 - x0`` is the width it reports.
    """
    import cv2

    height, width = prob.shape
    mask = cv2.dilate((prob > THRESH).astype(np.uint8), np.ones((2, 2), np.uint8))
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    out = []
    for k in range(1, count):
        left, top, w, h = (int(v) for v in stats[k, :4])
        x0, y0, x1, y1 = float(left), float(top), float(left + w - 1), float(top + h - 1)
        bw, bh = x1 - x0, y1 - y0
        if min(bw, bh) < MIN_SIZE:
            continue
        # box_score_fast: mean probability over the filled rectangle (the box's pixels, inclusive)
        if float(prob[top : top + h, left : left + w].mean()) < BOX_THRESH:
            continue
        dist = bw * bh * UNCLIP_RATIO / (2 * (bw + bh))
        x0, y0, x1, y1 = x0 - dist, y0 - dist, x1 + dist, y1 + dist
        if min(x1 - x0, y1 - y0) < MIN_SIZE + 2:
            continue
        xs = np.clip(np.round(np.array([x0, x1]) / width * dest_w), 0, dest_w - 1)
        ys = np.clip(np.round(np.array([y0, y1]) / height * dest_h), 0, dest_h - 1)
        if xs[1] - xs[0] <= 3 or ys[1] - ys[0] <= 3:
            continue
        out.append((xs[0], ys[0], xs[1], ys[1]))
    return np.array(out, dtype=np.float64).reshape(-1, 4)


def iou_matrix(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """IoU of every predicted box with every ground-truth box, both (x0, y0, x1, y1)."""
    if len(pred) == 0 or len(truth) == 0:
        return np.zeros((len(pred), len(truth)))
    ix0 = np.maximum(pred[:, None, 0], truth[None, :, 0])
    iy0 = np.maximum(pred[:, None, 1], truth[None, :, 1])
    ix1 = np.minimum(pred[:, None, 2], truth[None, :, 2])
    iy1 = np.minimum(pred[:, None, 3], truth[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area_p = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
    area_t = (truth[:, 2] - truth[:, 0]) * (truth[:, 3] - truth[:, 1])
    return inter / (area_p[:, None] + area_t[None, :] - inter)


def match(pred: np.ndarray, truth: np.ndarray, min_iou: float = MATCH_IOU) -> list[float]:
    """Greedy one-to-one matching by decreasing IoU; the IoUs of the pairs at or above ``min_iou``."""
    iou = iou_matrix(pred, truth)
    used_p, used_t, ious = set(), set(), []
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        p, t = divmod(int(flat), iou.shape[1])
        if iou[p, t] < min_iou:
            break
        if p in used_p or t in used_t:
            continue
        used_p.add(p)
        used_t.add(t)
        ious.append(float(iou[p, t]))
    return ious


@lru_cache(maxsize=1)
def _eval_pages() -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """Render and preprocess the evaluation pages once per process: (pages, model inputs, boxes)."""
    pages, truths = make_pages(N_EVAL, ppocr_rec.eval_lines(4000, EVAL_SEED), EVAL_SEED + 1)
    return tuple(pages), tuple(preprocess(p) for p in pages), tuple(truths)


def predict(model_path: str, inputs: list[np.ndarray], page_shapes: list[tuple[int, int]]) -> list[np.ndarray]:
    """Run the model ``BATCH`` pages at a time and cut boxes from each probability map."""
    sess = _common.make_session(model_path)
    boxes = []
    for start in range(0, len(inputs), BATCH):
        probs = sess.run(None, {INPUT_NAME: np.stack(inputs[start : start + BATCH])})[0]
        for prob, (h, w) in zip(probs, page_shapes[start : start + BATCH], strict=True):
            boxes.append(db_boxes(prob[0], h, w))
    return boxes


def evaluate(model_path: str, limit: int | None = None) -> dict:
    """Box F1 at IoU >= 0.5 over the evaluation pages, with precision, recall and mean matched IoU."""
    pages, inputs, truths = (x[:limit] for x in _eval_pages())
    preds = predict(model_path, list(inputs), [p.shape[:2] for p in pages])
    matched = [match(pred, truth.astype(np.float64)) for pred, truth in zip(preds, truths, strict=True)]
    ious = [iou for page in matched for iou in page]
    n_pred, n_true = sum(map(len, preds)), sum(map(len, truths))
    precision = len(ious) / n_pred if n_pred else 0.0
    recall = len(ious) / n_true if n_true else 0.0
    f1 = 2 * len(ious) / (n_pred + n_true) if n_pred + n_true else 0.0
    return {
        "metric": "box_f1@0.5",
        "value": f1,
        # per page: F1 is 2 x matched over predicted + true boxes, summed over pages
        "units": units([2 * len(m) for m in matched], [len(p) + len(t) for p, t in zip(preds, truths, strict=True)]),
        "precision": precision,
        "recall": recall,
        "mean_iou": float(np.mean(ious)) if ious else 0.0,
        "boxes_true": n_true,
        "boxes_pred": n_pred,
        "fonts": "dejavu" if ppocr_rec.font_files()[1] else "fallback",
        "n": len(pages),
    }


def calibration_feeds(n: int) -> list[dict[str, np.ndarray]]:
    """Render ``n`` calibration pages from the built-ins' docstrings, ``BATCH`` pages per feed."""
    pages, _ = make_pages(n, ppocr_rec.calib_lines(1000), CALIB_SEED)
    inputs = [preprocess(p) for p in pages]
    return [{INPUT_NAME: np.stack(inputs[i : i + BATCH])} for i in range(0, len(inputs), BATCH)]
