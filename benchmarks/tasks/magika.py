"""Magika file-type identification on real files from ``/usr``, labelled by their extension.

Why this task: magika's ``standard_v3_3`` model is a small real CNN/attention classifier shipped in a
PyPI wheel, and ``/usr`` holds thousands of real files of many types, so accuracy before and after
quantization is measured on real inputs without any download.

How the data is built (once, then frozen in ``benchmarks/results/cache/``):

- ``CLASSES`` maps a magika label to the file extensions that reliably carry it. Extensions whose
  content is ambiguous were dropped after looking at the float model's answers: ``.h``/``.hpp``/
  ``.inl`` (C or C++), ``.txt`` (mostly reStructuredText), ``.pl`` (mostly Perl *data* tables),
  ``.conf``/``.properties`` (many dialects), ``.mo`` (no magika label), ``.a`` (ar archive, no label).
- Every regular, non-symlink file under ``/usr`` with such an extension is a candidate. Per class the
  candidates are ordered by the SHA-1 of their path (a deterministic shuffle that mixes packages),
  features are extracted exactly as magika does, and files whose features duplicate an earlier
  file's are skipped, so no content sits in both the evaluation and the calibration split.
- Of the first ``4 * EVAL_PER_CLASS // 3`` unique files of a class, every fourth goes to calibration
  and the rest (at most ``EVAL_PER_CLASS``) to evaluation. Classes with fewer than
  ``MIN_EVAL_PER_CLASS`` evaluation files are dropped. Samples are interleaved across classes so
  that ``limit`` gives a class-balanced subset.

The frozen cache matters: installing a package adds files to ``/usr`` and would silently change the
sample, so before/after numbers must come from the same cache file. Delete it to re-sample.

Metric: accuracy of the argmax of a raw onnxruntime run of the model (magika's own confidence
thresholds and overwrite map are deliberately not applied: they would hide score changes).

Measured with the float model (magika 1.0.3, onnxruntime 1.32, this machine's ``/usr``):
accuracy 0.9812, macro accuracy 0.9800, mean true-class probability 0.9636 over n=1599 files in
35 classes (30 errors, mostly near neighbours: css->scss, md->txt, xml->rdf, c->cpp). Inference took
about 5 ms per file on 2 cores at best (8 s for the set) and 17 s while another job kept one core
busy; building the cache adds 2 s (files already in the page cache) to 12 s (cold), once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..paired import units
from . import _common

SCAN_ROOT = Path("/usr")
EVAL_PER_CLASS = 60
MIN_EVAL_PER_CLASS = 8
INPUT_NAME = "bytes"
BATCH = 64  # larger batches were slower on 2 cores
CALIB_BATCH = 8
CALIB_SEED = 0  # calibration_feeds' seed that takes the first n samples: the draw bench_calibration uses

# magika label -> extensions (lower case, without the dot) whose files carry that label.
CLASSES: dict[str, tuple[str, ...]] = {
    "python": ("py", "pyi"),
    "pythonbytecode": ("pyc",),
    "c": ("c",),
    "perl": ("pm", "t"),
    "javascript": ("js",),
    "json": ("json",),
    "xml": ("xml", "pom", "xsd"),
    "yaml": ("yaml", "yml"),
    "rst": ("rst",),
    "markdown": ("md",),
    "html": ("html",),
    "css": ("css",),
    "svg": ("svg",),
    "cmake": ("cmake",),
    "shell": ("sh",),
    "tcl": ("tcl",),
    "php": ("php",),
    "sql": ("sql",),
    "ini": ("ini", "service"),
    "pem": ("crt", "pem"),
    "m4": ("m4",),
    "powershell": ("ps1",),
    "batch": ("bat",),
    "makefile": ("mk",),
    "toml": ("toml",),
    "awk": ("awk",),
    "ignorefile": ("gitignore",),
    "postscript": ("ps",),
    "elf": ("so", "o", "debug"),
    "pebin": ("exe",),
    "png": ("png",),
    "gif": ("gif",),
    "gzip": ("gz",),
    "jar": ("jar",),
    "ttf": ("ttf",),
}


def default_model_path() -> Path:
    """Locate ``standard_v3_3/model.onnx`` inside the installed magika package without importing it.

    ``find_spec`` avoids running magika's ``__init__`` (and keeps this module importable when the
    package is missing: only calling this function needs it).
    """
    spec = importlib.util.find_spec("magika")
    if spec is not None and spec.origin and Path(spec.origin).resolve() == Path(__file__).resolve():
        raise RuntimeError("`import magika` finds this file: do not put benchmarks/tasks itself on sys.path")
    return _common.package_file("magika", "models", "standard_v3_3", "model.onnx")


@lru_cache(maxsize=1)
def model_config() -> dict:
    """Read ``config.min.json`` of the float model (a quantized copy elsewhere has no config next to it)."""
    return json.loads((default_model_path().parent / "config.min.json").read_text())


def extract_features(path: str | os.PathLike[str], cfg: dict) -> np.ndarray | None:
    """Reproduce magika 1.0.3 ``_extract_features_from_seekable`` for one file.

    Read at most ``block_size`` bytes at each end, ``lstrip`` the head and ``rstrip`` the tail (ASCII
    whitespace, as ``bytes.strip`` does), keep ``beg_size`` / ``end_size`` bytes and pad with
    ``padding_token`` after the head and before the tail. Returns None where magika would not run the
    model at all (too few meaningful bytes).
    """
    beg_size, end_size, pad = cfg["beg_size"], cfg["end_size"], cfg["padding_token"]
    assert cfg["mid_size"] == 0 and not cfg["use_inputs_at_offsets"], "feature layout changed"
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size < cfg["min_file_size_for_dl"]:
            return None
        n = min(cfg["block_size"], size)
        fh.seek(0)
        beg = fh.read(n).lstrip()[:beg_size]
        fh.seek(size - n)
        end = fh.read(n).rstrip()[-end_size:]
    if len(beg) < cfg["min_file_size_for_dl"]:
        return None
    out = np.full(beg_size + end_size, pad, dtype=np.int32)
    out[: len(beg)] = np.frombuffer(beg, dtype=np.uint8)
    if end:
        out[beg_size + end_size - len(end) :] = np.frombuffer(end, dtype=np.uint8)
    return out


def _candidates() -> dict[str, list[str]]:
    """Walk ``SCAN_ROOT`` once and group regular files by the label their extension maps to."""
    ext_to_label = {ext: label for label, exts in CLASSES.items() for ext in exts}
    found: dict[str, list[str]] = {label: [] for label in CLASSES}
    for root, dirs, files in os.walk(SCAN_ROOT):
        dirs.sort()
        for name in files:
            label = ext_to_label.get(name.rsplit(".", 1)[-1].lower()) if "." in name else None
            path = os.path.join(root, name)
            if label is not None and not os.path.islink(path) and os.path.isfile(path):
                found[label].append(path)
    for paths in found.values():
        paths.sort(key=lambda p: hashlib.sha1(p.encode()).hexdigest())
    return found


def _unique_features(paths: list[str], cfg: dict, seen: set[bytes], want: int) -> list[tuple[str, np.ndarray]]:
    """Take the first ``want`` files whose model input has not been seen yet (updates ``seen``)."""
    picked: list[tuple[str, np.ndarray]] = []
    for path in paths:
        if len(picked) >= want:
            break
        try:
            feats = extract_features(path, cfg)
        except OSError:
            continue
        if feats is None:
            continue
        digest = hashlib.sha1(feats.tobytes()).digest()
        if digest not in seen:
            seen.add(digest)
            picked.append((path, feats))
    return picked


def _interleave(groups: list[list[tuple[str, np.ndarray, int]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round-robin the per-class lists so any prefix of the result is roughly class-balanced."""
    rows = [g[i] for i in range(max(map(len, groups), default=0)) for g in groups if i < len(g)]
    x = np.stack([r[1] for r in rows]).astype(np.int32)
    y = np.array([r[2] for r in rows], dtype=np.int64)
    return x, y, np.array([r[0] for r in rows])


def _build_dataset() -> dict[str, np.ndarray]:
    """Sample, featurise and split the files (see the module docstring for the rules)."""
    cfg = model_config()
    labels = cfg["target_labels_space"]
    seen: set[bytes] = set()
    eval_groups, calib_groups = [], []
    for label, paths in _candidates().items():
        picked = _unique_features(paths, cfg, seen, 4 * EVAL_PER_CLASS // 3)
        rows = [(path, feats, labels.index(label)) for path, feats in picked]
        ev = [r for i, r in enumerate(rows) if i % 4 != 3][:EVAL_PER_CLASS]
        if len(ev) >= MIN_EVAL_PER_CLASS:
            eval_groups.append(ev)
            calib_groups.append([r for i, r in enumerate(rows) if i % 4 == 3])
    eval_x, eval_y, eval_paths = _interleave(eval_groups)
    calib_x, calib_y, calib_paths = _interleave(calib_groups)
    return {
        "eval_x": eval_x,
        "eval_y": eval_y,
        "eval_paths": eval_paths,
        "calib_x": calib_x,
        "calib_y": calib_y,
        "calib_paths": calib_paths,
    }


def _cache_path() -> Path:
    """Name the cache after everything that shapes the sample, so a rule change never reuses it."""
    cfg = model_config()
    shape = [cfg[k] for k in ("beg_size", "end_size", "block_size", "padding_token")]
    key = json.dumps([str(SCAN_ROOT), EVAL_PER_CLASS, MIN_EVAL_PER_CLASS, CLASSES, shape], sort_keys=True)
    return _common.cache_dir() / f"magika_usr_{hashlib.sha1(key.encode()).hexdigest()[:12]}.npz"


@lru_cache(maxsize=1)
def dataset() -> dict[str, np.ndarray]:
    """Load the frozen sample, building it on first use."""
    path = _cache_path()
    if not path.exists():
        _common.save_npz_atomic(path, **_build_dataset())
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def evaluate(model_path: str, limit: int | None = None) -> dict:
    """Top-1 accuracy of the raw model against the extension label (plus macro accuracy, true-class prob)."""
    data = dataset()
    x, y = data["eval_x"][:limit], data["eval_y"][:limit]
    sess = _common.make_session(model_path)
    probs = np.concatenate([sess.run(None, {INPUT_NAME: x[i : i + BATCH]})[0] for i in range(0, len(x), BATCH)])
    correct = probs.argmax(axis=1) == y
    per_class = [correct[y == c].mean() for c in np.unique(y)]
    return {
        "metric": "accuracy",
        "value": float(correct.mean()),
        "units": units(correct),
        "macro_accuracy": float(np.mean(per_class)),
        "mean_true_prob": float(probs[np.arange(len(y)), y].mean()),
        "n_classes": len(per_class),
        "n": len(y),
    }


def calibration_feeds(n: int, seed: int = CALIB_SEED) -> list[dict[str, np.ndarray]]:
    """Up to ``n`` files of the calibration split (disjoint files and contents), ``CALIB_BATCH`` per feed: the first
    ``n`` (``CALIB_SEED``, the benchmark's draw), or with another seed (``bench_draws``) ``n`` drawn from the whole
    split."""
    x = dataset()["calib_x"]
    if seed != CALIB_SEED:
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), min(n, len(x)), replace=False))]
    x = x[:n]
    return [{INPUT_NAME: x[i : i + CALIB_BATCH]} for i in range(0, len(x), CALIB_BATCH)]
