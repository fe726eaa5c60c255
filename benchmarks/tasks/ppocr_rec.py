"""PP-OCRv6 small text recognition on synthetic text lines rendered with real fonts.

Why this task: the recognizer shipped in the rapidocr wheel is a real convolution + transformer
model with an 18 710-way CTC head; a line-level OCR score reacts to small numeric changes in every
layer, so it is a sensitive before/after check for quantization.

Data: ``N_EVAL`` lines from a seeded generator over a fixed English word list (``WORDS``) mixed
with numbers, dates, prices, codes and punctuation, all characters being printable ASCII that the
model's dictionary holds. Each line is rendered with Pillow's basic layout engine (no Raqm, so the
pixels do not depend on optional libraries) in black on white with a seeded choice of DejaVu face
(sans, serif, mono, condensed, bold, oblique), size and margins. If the DejaVu folder is missing,
any TrueType font under ``/usr/share/fonts`` is used instead and ``evaluate`` reports
``fonts="fallback"``: its numbers are then not comparable with the ones below.
Calibration lines come from a different source: the docstrings of Python's built-in names, cut into
short lines, rendered with another seed.

Pre- and post-processing reproduce rapidocr 3.10 (``ch_ppocr_rec/main.py`` and ``utils.py``): lines
sorted by aspect ratio and batched; each image resized with ``cv2.resize`` (bilinear) to height 48
and width ``ceil(48 * w / h)`` (capped at the batch's widest), scaled by ``(x / 255 - 0.5) / 0.5``,
right-padded with zeros to ``int(48 * max(320 / 48, widest ratio))``, NCHW; CTC greedy decoding
removes repeats and blank 0, with the character list ``["blank"] + metadata["character"] + [" "]``.

Metrics: character accuracy ``1 - sum(edit distance) / sum(reference length)`` over all lines, and
line accuracy (exact match).

Measured with the float model (rapidocr 3.10.0, onnxruntime 1.32, Pillow 13.0, DejaVu fonts):
character accuracy 0.99942, line accuracy 0.9867 on n=300 lines (the 4 wrong lines differ only in
trailing punctuation such as ``:...`` read as ``....``). It took 7.5 s on 2 cores at best and 20 s
while another job kept one core busy. With ``BATCH = 6`` the decoded texts were checked equal, line
for line, to those of rapidocr's own ``TextRecognizer`` on the same images.
"""

from __future__ import annotations

import builtins
import math
import random
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..paired import units
from . import _common

N_EVAL = 300
EVAL_SEED = 20240531
CALIB_SEED = 77
CALIB_POOL = 800  # calibration lines a draw picks from (the built-ins' docstrings give about 850)
BATCH = 6  # rapidocr's rec_batch_num: with it our outputs equal TextRecognizer's line for line
REC_HEIGHT, REC_MIN_WIDTH = 48, 320
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
# The math font has unusual glyphs and the extra-light face is barely legible at small sizes.
FONT_SKIP = ("DejaVuMathTeXGyre.ttf", "DejaVuSans-ExtraLight.ttf")
INPUT_NAME = "x"

_WORD_TEXT = """
the of and to in is was for that with as on by at from his her they this which have not are but
be one all were we when there can an your their if has more will so about would what out up into
them some time could other than then now only its also over after first many new these two may
way people water number called long make day part made find very year back work world house place
light line right through small great much before must under around even answer every found still
study learn should never school river letter paper group always music those both mark often until
mountain young ready above color question morning north south east west window garden yellow
orange silver bridge market number system engine signal winter summer autumn spring island forest
quick brown fox jumps lazy dog pack box five dozen liquor jugs zebra quartz vivid wax jovial
kitchen museum library station airport ticket coffee bottle planet rocket camera pencil mirror
doctor lawyer farmer pilot sailor writer builder painter teacher student village harbour castle
"""
WORDS = tuple(_WORD_TEXT.split())


def default_model_path() -> Path:
    """Locate ``models/PP-OCRv6_rec_small.onnx`` in the installed rapidocr package without importing it."""
    return _common.package_file("rapidocr", "models", "PP-OCRv6_rec_small.onnx")


@lru_cache(maxsize=1)
def character_list() -> tuple[str, ...]:
    """CTC classes of the float model: blank, the metadata dictionary, then the space rapidocr appends.

    Read from the float model because a quantized copy may not keep ``metadata_props``.
    """
    import onnx

    model = onnx.load(str(default_model_path()), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    return ("blank", *meta["character"].splitlines(), " ")


def _number(rng: random.Random) -> str:
    """One numeric token in a common format, so digits and their punctuation get exercised."""
    kind = rng.randrange(8)
    n = rng.randrange(1, 100000)
    return [
        str(n),
        f"{n:,}",
        f"{n / 100:.2f}",
        f"${n / 100:.2f}",
        f"{n % 100}%",
        f"{1900 + n % 130}-{1 + n % 12:02d}-{1 + n % 28:02d}",
        f"{n % 24}:{n % 60:02d}",
        f"#{chr(65 + n % 26)}{n % 1000}",
    ][kind]


def eval_lines(n: int = N_EVAL, seed: int = EVAL_SEED) -> list[str]:
    """Generate the evaluation text: 3 to 8 tokens per line, words mixed with numbers and punctuation."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        tokens = []
        for _ in range(rng.randint(3, 8)):
            tok = _number(rng) if rng.random() < 0.2 else rng.choice(WORDS)
            tok = tok.capitalize() if rng.random() < 0.15 else tok
            tok = tok + rng.choice([",", ";", ":", "!", "?", "."]) if rng.random() < 0.12 else tok
            tok = rng.choice(['"{}"', "({})", "'{}'", "[{}]"]).format(tok) if rng.random() < 0.06 else tok
            tokens.append(tok)
        line = " ".join(tokens)
        lines.append(line[0].upper() + line[1:] + rng.choice([".", ".", "", "?", "!", " -", "..."]))
    return lines


def calib_lines(n: int) -> list[str]:
    """Cut the docstrings of built-in names into 6-word lines (about 850 exist): a source unlike ``WORDS``."""
    allowed = {chr(c) for c in range(32, 127)}
    lines: list[str] = []
    for name in sorted(dir(builtins)):
        doc = getattr(getattr(builtins, name), "__doc__", None) or ""
        words = "".join(ch if ch in allowed else " " for ch in doc).split()
        lines += [" ".join(words[i : i + 6]) for i in range(0, len(words), 6)]
        if len(lines) >= n:
            break
    return lines[:n]


@lru_cache(maxsize=1)
def font_files() -> tuple[tuple[str, ...], bool]:
    """Return the fonts to render with and whether they are the intended DejaVu set."""
    dejavu = sorted(str(p) for p in FONT_DIR.glob("*.ttf") if p.name not in FONT_SKIP)
    if dejavu:
        return tuple(dejavu), True
    other = sorted(str(p) for p in Path("/usr/share/fonts").rglob("*.ttf") if p.name not in FONT_SKIP)
    if not other:
        raise RuntimeError("no TrueType font found under /usr/share/fonts")
    return tuple(other), False


def render(text: str, rng: random.Random) -> np.ndarray:
    """Draw one line black on white with a random font, size and margin; HxWx3 uint8 like cv2 images."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(rng.choice(font_files()[0]), rng.randint(20, 40), layout_engine=ImageFont.Layout.BASIC)
    box = font.getbbox(text)  # whole pixels in practice; typed as floats
    left, top, right, bottom = math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3])
    mx, my = rng.randint(2, 12), rng.randint(2, 10)
    img = Image.new("L", (right - left + 2 * mx, bottom - top + 2 * my), 255)
    ImageDraw.Draw(img).text((mx - left, my - top), text, font=font, fill=0)
    return np.repeat(np.asarray(img)[:, :, None], 3, axis=2)


def _resize_norm(img: np.ndarray, max_wh_ratio: float) -> np.ndarray:
    """Apply rapidocr's ``TextRecognizer.resize_norm_img`` to one image, returning CHW float32."""
    import cv2

    width = int(REC_HEIGHT * max_wh_ratio)
    h, w = img.shape[:2]
    resized_w = min(width, math.ceil(REC_HEIGHT * w / float(h)))
    resized = cv2.resize(img, (resized_w, REC_HEIGHT)).astype("float32").transpose((2, 0, 1)) / 255
    out = np.zeros((3, REC_HEIGHT, width), dtype=np.float32)
    out[:, :, :resized_w] = (resized - 0.5) / 0.5
    return out


def batches(images: list[np.ndarray], batch: int = BATCH) -> list[tuple[np.ndarray, np.ndarray]]:
    """Group images of similar aspect ratio (as rapidocr does) into (indices, NCHW tensor) pairs."""
    ratios = np.array([img.shape[1] / float(img.shape[0]) for img in images])
    order = np.argsort(ratios, kind="stable")
    out = []
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        max_ratio = max(REC_MIN_WIDTH / REC_HEIGHT, float(ratios[idx].max()))
        out.append((idx, np.stack([_resize_norm(images[i], max_ratio) for i in idx])))
    return out


def ctc_greedy(logits: np.ndarray, chars: tuple[str, ...]) -> list[str]:
    """Decode like rapidocr's ``CTCLabelDecode`` without scores: argmax, drop repeats, drop blank 0."""
    texts = []
    for ids in logits.argmax(axis=2):
        keep = np.ones(len(ids), dtype=bool)
        keep[1:] = ids[1:] != ids[:-1]
        keep &= ids != 0
        texts.append("".join(chars[i] for i in ids[keep]))
    return texts


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insert, delete, substitute all cost 1)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


@lru_cache(maxsize=1)
def _eval_images() -> tuple[tuple[str, ...], tuple[np.ndarray, ...]]:
    """Render the evaluation set once per process (rendering is fast, so it is not cached on disk)."""
    rng = random.Random(EVAL_SEED + 1)
    lines = eval_lines()
    return tuple(lines), tuple(render(line, rng) for line in lines)


def evaluate(model_path: str, limit: int | None = None) -> dict:
    """Character and line accuracy of greedy CTC decoding over the rendered evaluation lines."""
    lines, images = _eval_images()
    lines, images = lines[:limit], images[:limit]
    sess, chars = _common.make_session(model_path), character_list()
    preds = [""] * len(lines)
    for idx, tensor in batches(list(images)):
        for i, text in zip(idx, ctc_greedy(sess.run(None, {INPUT_NAME: tensor})[0], chars), strict=True):
            preds[i] = text
    per_line = [edit_distance(p, t) for p, t in zip(preds, lines, strict=True)]
    sizes = [len(t) for t in lines]
    return {
        "metric": "char_accuracy",
        "value": 1.0 - sum(per_line) / sum(sizes),
        "units": units(np.subtract(sizes, per_line), sizes),
        "line_accuracy": float(np.mean([p == t for p, t in zip(preds, lines, strict=True)])),
        "fonts": "dejavu" if font_files()[1] else "fallback",
        "n": len(lines),
    }


def calibration_feeds(n: int, seed: int = CALIB_SEED) -> list[dict[str, np.ndarray]]:
    """Render ``n`` calibration lines and group them, ``BATCH`` per feed, by aspect ratio. ``CALIB_SEED`` takes the
    first ``n`` lines of the built-ins' docstrings; another seed (``bench_draws``) draws ``n`` of all of them
    (``CALIB_POOL``) and renders them with its own fonts and sizes."""
    rng = random.Random(seed)
    lines = calib_lines(n) if seed == CALIB_SEED else rng.sample(calib_lines(CALIB_POOL), n)
    images = [render(line, rng) for line in lines]
    return [{INPUT_NAME: tensor} for _, tensor in batches(images)]
