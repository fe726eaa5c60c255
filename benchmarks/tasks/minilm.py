"""all-MiniLM-L6-v2 retrieval: match each docstring summary line to the rest of its docstring.

Why this task: a real 22.6M-weight transformer encoder whose sentence embeddings feed a ranking, so
small weight errors that shift embeddings show up as lost top-1 hits and a lower MRR.

Data and model live in the shared read-only folder (``<repo>/../shared``, or ``$STATQ_SHARED``):
``data/minilm/eval_pairs.npz`` holds 600 tokenised query/document pairs from Python standard-library
docstrings, ``data/minilm/calib.npz`` 234 other tokenised English sentences (disjoint source).

Embedding: token embeddings (output 0) averaged with the attention mask as weights, then
L2-normalised; ``token_type_ids`` are zeros. Every query is ranked against all documents by cosine;
the paired document is the right answer. Batches are built from length-sorted rows and trimmed to
the batch's longest mask, which changes nothing numerically (padding is masked) but saves most of
the work. With ``limit`` only the first ``limit`` pairs are used, so the pool of documents is smaller
and the task easier: compare limited runs only with limited runs.

Measured with the float model (onnxruntime 1.32): top-1 0.3900, MRR 0.5269, n=600 (the shared
README states 0.390 / 0.527); about 20 s on 2 cores shared with another job (the documents
dominate: about 45k real tokens).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..paired import units
from . import _common

BATCH = 32
CALIB_BATCH = 8
CALIB_SEED = 0  # calibration_feeds' seed that takes the first n samples: the draw bench_calibration uses


def default_model_path() -> Path:
    """Return the float model in the shared folder (it is 90 MB and must never be copied into the repo)."""
    return _common.shared_dir() / "models" / "minilm-l6-v2.onnx"


def _data_path(name: str) -> Path:
    """Locate one of the shared MiniLM data files."""
    return _common.shared_dir() / "data" / "minilm" / name


def _feed(ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """Trim a padded batch to its longest mask and add zero token types."""
    width = max(int(mask.sum(axis=1).max()), 1)
    ids, mask = ids[:, :width].astype(np.int64), mask[:, :width].astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def embed(sess: ort.InferenceSession, ids: np.ndarray, mask: np.ndarray, batch: int = BATCH) -> np.ndarray:
    """Sentence embeddings [n, 384], L2-normalised, in the input's row order.

    Masks must be right-padded (ones then zeros), which trimming relies on.
    """
    lengths = mask.sum(axis=1)
    if not np.array_equal(mask, np.arange(mask.shape[1])[None, :] < lengths[:, None]):
        raise ValueError("attention masks must be contiguous from the left for trimming to be exact")
    order = np.argsort(lengths, kind="stable")
    pooled = []
    for start in range(0, len(order), batch):
        feed = _feed(ids[order[start : start + batch]], mask[order[start : start + batch]])
        tokens = sess.run(None, feed)[0]
        m = feed["attention_mask"][:, :, None].astype(np.float32)
        pooled.append((tokens * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9))
    out = np.empty((len(order), pooled[0].shape[1]), dtype=np.float32)
    out[order] = np.concatenate(pooled)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def evaluate(model_path: str, limit: int | None = None) -> dict:
    """Top-1 accuracy and MRR of query -> document retrieval by cosine similarity."""
    with np.load(_data_path("eval_pairs.npz")) as data:
        q_ids, q_mask = data["query_ids"][:limit], data["query_mask"][:limit]
        d_ids, d_mask = data["doc_ids"][:limit], data["doc_mask"][:limit]
    sess = _common.make_session(model_path)
    sims = embed(sess, q_ids, q_mask) @ embed(sess, d_ids, d_mask).T
    correct = np.diag(sims)
    ranks = 1 + (sims > correct[:, None]).sum(axis=1)  # ties count in the model's favour
    return {
        "metric": "top1",
        "value": float((ranks == 1).mean()),
        "units": units(ranks == 1),
        "mrr": float((1.0 / ranks).mean()),
        "n": len(ranks),
    }


def calibration_feeds(n: int, seed: int = CALIB_SEED) -> list[dict[str, np.ndarray]]:
    """Return the first ``n`` calibration sentences (``CALIB_SEED``, the benchmark's draw), or with another seed
    (``bench_draws``) ``n`` drawn from all of them, ``CALIB_BATCH`` per feed, trimmed to the longest mask."""
    with np.load(_data_path("calib.npz")) as data:
        ids, mask = data["input_ids"], data["attention_mask"]
    if seed != CALIB_SEED:
        pick = np.sort(np.random.default_rng(seed).choice(len(ids), min(n, len(ids)), replace=False))
        ids, mask = ids[pick], mask[pick]
    ids, mask = ids[:n], mask[:n]
    return [_feed(ids[i : i + CALIB_BATCH], mask[i : i + CALIB_BATCH]) for i in range(0, len(ids), CALIB_BATCH)]
