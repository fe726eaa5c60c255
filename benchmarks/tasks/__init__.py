"""Task evaluators: one module per real model, measuring a real task metric before/after quantization.

Every module exposes the same small interface, so benchmarks can loop over ``TASKS``:

- ``default_model_path() -> Path``: where the float model lives (inside an installed wheel, in the
  repository, or in the shared read-only folder).
- ``evaluate(model_path, limit=None) -> dict``: ``{"metric": name, "value": float, ..., "n": count}``
  plus task-specific secondary metrics; ``limit`` keeps only the first ``limit`` evaluation samples.
- ``calibration_feeds(n) -> list[dict[str, np.ndarray]]``: feeds covering up to ``n`` samples, in
  small batches, keyed by the model's input names, drawn from data disjoint from the evaluation data.

``TASKS`` is the default set that every benchmark runs when no task is named. ``EXTRA_TASKS`` holds
other real models of the same kinds (the PP-OCR detector and direction classifier, the silero-vad recurrent
voice detector), checked only on
request: ``ALL_TASKS`` is what a ``--tasks`` option accepts, e.g.
``python -m benchmarks.bench_models --tasks ppocr_det,ppocr_cls``. They stay out of the default set so
that the full runs, and the result files written from them, keep their length and meaning.

The modules import only numpy and onnxruntime at import time; magika, rapidocr, silero-vad, espeak-ng,
Pillow, OpenCV and onnx are located or imported when a task runs, so importing this registry never needs them.
"""

from __future__ import annotations

from types import ModuleType

from . import digits, magika, minilm, ppocr_cls, ppocr_det, ppocr_rec, silero_vad

TASKS: dict[str, ModuleType] = {
    "digits": digits,
    "magika": magika,
    "ppocr_rec": ppocr_rec,
    "minilm": minilm,
}
EXTRA_TASKS: dict[str, ModuleType] = {
    "ppocr_det": ppocr_det,
    "ppocr_cls": ppocr_cls,
    "silero_vad": silero_vad,
}
ALL_TASKS: dict[str, ModuleType] = {**TASKS, **EXTRA_TASKS}
