"""Sequential calibration: walk the calibrated layers in topological order, refit each on the quantized stream.

The pass hands over a :class:`LayerPlan` per weight (its data-free encoding and where it sits in the graph); this
module returns refined encodings and bias corrections. It runs onnxruntime through :class:`StreamExecutor` and
numpy through :mod:`refit`; it never edits the model.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import numpy as np
import onnx

from ..errors import CalibrationError
from ..plan import RECOMMENDED_SAMPLES, CalibrationMode, CalibrationSummary, LayerOutcome, LayerPlan
from .branches import inline_taken_branches
from .data import NON_FINITE, feed_samples
from .executor import StreamExecutor
from .geometry import LayerGeometry, patches, supported
from .gram import MAX_ROWS, GramStats
from .masks import feed_masks, real_positions, real_rows
from .refit import refit_layer

__all__ = ["DEFAULT_COMPENSATION", "OP_COMPENSATION", "calibrate", "compensation_for", "model_output_sqnr"]

logger = logging.getLogger(__name__)

# Measured on PP-OCRv6 at 4 bits: the mean-output (bias) correction lifts character accuracy from 0.964 to 0.997
# on convolutions, but on MatMul layers (attention and the classifier head) it lowered it to 0.867, so MatMul
# layers get the codebook refit only. See docs/calibration.md.
BIAS_OPS = frozenset({"Conv", "Gemm"})

# GPTQ-style error-feedback assignment (refit.refit_layer, feedback.py): tried on the refitted convolutions and kept
# where it lowers the layer's calibration error. On every layer it lifted the PP-OCR direction classifier (4 bits:
# -1.50 -> -0.25 points) but cost PP-OCRv6 recognition 10 points of line accuracy at 4 bits: its MatMul layers
# (attention, the 18,710-class head) fit the 32 calibration lines too closely, as the bias correction did. On the
# convolutions only: classifier -0.25 / -1.25 points at 4 / 3 bits, recognizer -0.07 / -0.34 (line accuracy -2.3 /
# -10.3, against -3.0 / -31.7 without feedback). A layer with fewer calibration rows than inputs does not try it
# (refit.FEEDBACK_MIN_ROWS_PER_INPUT). See docs/calibration.md.
DEFAULT_ERROR_FEEDBACK = True
FEEDBACK_OPS = frozenset({"Conv"})

# The refit target's compensation (refit.py: _target) when the caller gives none. MatMul layers get 0, the GPTQ
# target: in a transformer they sit in residual blocks, where a layer asked to undo upstream error that also reaches
# the output through the skip connection over-corrects. MiniLM at 3 bits, every layer at c = 0 / 0.5 / 1: -1.67 /
# -3.83 / -14.17 points of top-1; PP-OCRv6 recognition (convolutions, then attention and a MatMul head) -0.41 /
# -0.34 / -0.55. Convolutions and Gemm keep half compensation. See docs/calibration.md.
DEFAULT_COMPENSATION = 0.5
OP_COMPENSATION = {"MatMul": 0.0}


def compensation_for(op: str, compensation: float | None) -> float:
    """The compensation a layer of type ``op`` is refitted with: the caller's, or the default for its type."""
    return OP_COMPENSATION.get(op, DEFAULT_COMPENSATION) if compensation is None else compensation


def model_output_sqnr(
    ref: list[dict[str, np.ndarray]],
    out: list[dict[str, np.ndarray]],
    masks: list[np.ndarray | None] | None = None,
) -> float | None:
    """SQNR in dB over every float output of every feed (None when the reference is all zeros). ``masks``: per
    feed, the padding mask (:mod:`.masks`); an output laid out ``[batch, sequence, ...]`` then counts only the
    real positions."""
    noise = signal = 0.0
    for i, (a, b) in enumerate(zip(ref, out, strict=True)):
        mask = masks[i] if masks is not None else None
        for k, x in a.items():
            if k in b and np.issubdtype(np.asarray(x).dtype, np.floating):
                x, y = np.asarray(x), np.asarray(b[k])
                if x.shape == y.shape:
                    x, y = real_positions(x, mask), real_positions(y, mask)
                    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():  # -inf of masked logits
                        keep = np.isfinite(x)
                        x, y = x[keep], y[keep]
                n, s = _squared_sums(x, y)
                noise += n
                signal += s
    if signal == 0 or not np.isfinite(signal):  # nothing to compare
        return None
    if not np.isfinite(noise):  # the quantized model overflows where the float one does not: as verify says
        return float("-inf")
    return float("inf") if noise == 0 else 10 * np.log10(signal / noise)


def _no_sqnr_reason(ref: list[dict[str, np.ndarray]], out: list[dict[str, np.ndarray]]) -> str:
    """Why :func:`model_output_sqnr` gave no figure, for the report."""
    floats = [np.asarray(x) for feed in ref for x in feed.values()]
    floats = [x for x in floats if np.issubdtype(x.dtype, np.floating)]
    if not floats:
        return "the model has no float output"
    if all(not np.any(x[np.isfinite(x)]) for x in floats):  # -inf of masked logits aside
        return "the float model's outputs are all zero on the calibration data"
    return "an output holds NaN or Inf on the calibration data"


SUM_CHUNK = 1 << 16  # elements: float64 copies of this size stay in cache


def _squared_sums(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """sum((x - y)^2) and sum(x^2) in float64, a cache-sized chunk at a time.

    Whole-array float64 temporaries made this as slow as a float forward pass on PP-OCRv6 recognition (190 MB of
    logits per stream); chunks cost a fifth of that and agree to ~1e-13 dB."""
    xs, ys = x.reshape(-1), np.broadcast_to(y, x.shape).reshape(-1)
    noise = signal = 0.0
    for start in range(0, xs.size, SUM_CHUNK):
        x64 = xs[start : start + SUM_CHUNK].astype(np.float64)
        d = x64 - ys[start : start + SUM_CHUNK]
        noise += float(np.einsum("i,i->", d, d))
        signal += float(np.einsum("i,i->", x64, x64))
    return noise, signal


def calibrate(
    model: onnx.ModelProto,
    feeds: list[dict[str, np.ndarray]],
    plans: list[LayerPlan],
    mode: CalibrationMode,
    progress: Callable[[int, int, str], None] | None = None,
    refit_levels: bool = True,
    bias_correction: bool = True,
    compensation: float | None = None,
    error_feedback: bool = DEFAULT_ERROR_FEEDBACK,
    jobs: int = 1,
    mask_input: str | None = None,
) -> CalibrationSummary:
    """Refine the plans in topological order; weights of layers that cannot be refitted stay data-free, and so do
    those in If branches the calibration feeds do not take (:mod:`.branches`) and those planned ``data_free`` (their
    values are in the quantized stream from the start: the layers after them are fitted on what they will see).

    ``error_feedback`` also tries the GPTQ-style assignment of :mod:`feedback` on every refitted convolution
    (``FEEDBACK_OPS``) and keeps it where it lowers the layer's calibration error. ``compensation`` None gives each
    layer the default of its op type (:func:`compensation_for`). ``jobs`` threads run the calibration batches
    through onnxruntime at once; the result does not depend on it. ``mask_input``: a ``[batch, sequence]`` model
    input whose zeros mark padding, which MatMul refits then leave out (:mod:`.masks`)."""
    samples = sum(feed_samples(f) for f in feeds)
    few = samples < RECOMMENDED_SAMPLES  # refits from fewer rows than inputs then go only as far as held-out rows say
    if few:
        logger.warning(
            "calibrating on %d samples: with fewer than %d, small models can come out worse than data-free "
            "(docs/calibration.md, 'How many samples')",
            samples,
            RECOMMENDED_SAMPLES,
        )
    summary = CalibrationSummary(mode=str(mode), samples=samples, mask_input=mask_input)
    masks = feed_masks(feeds, mask_input)
    model, plans, unreached, summary.float_in_streams = inline_taken_branches(model, feeds, plans)
    summary.outcomes.update(unreached)
    fixed = [p for p in plans if p.data_free]
    plans = [p for p in plans if not p.data_free]
    # a layer refitted with compensation 0 reads only the quantized stream: the float one stops after the last
    # layer that reads it (on MiniLM, all MatMul, it never runs: no float segments, one Gram product instead of three)
    readers = [p.node_index for p in plans if _reads_float(p, mode, compensation)]
    feedback_s = 0.0
    opts = _Options(mode, refit_levels, bias_correction, compensation, error_feedback, few)
    with StreamExecutor(model, feeds, mode != CalibrationMode.INDEPENDENT, max(readers, default=0), jobs) as ex:
        for plan in fixed:  # in the quantized stream before any layer reads it
            ex.set_quantized(plan.weight, plan.encoded.decoded().astype(plan.values.dtype))
            summary.outcomes[plan.weight] = LayerOutcome(plan.encoded, note=f"data-free: {plan.data_free}")

        def refine(plan: LayerPlan) -> LayerOutcome:
            nonlocal feedback_s
            outcome, seconds = _calibrate_one(ex, plan, opts, masks)
            feedback_s += seconds
            return outcome

        t_run, t_fit = _walk(ex, plans, refine, summary, progress)
        t0 = time.perf_counter()
        ex.finish()
        ref, out = ex.graph_outputs()
        summary.sessions = ex.sessions
    # with weights the streams ran float, the figure would leave their error out
    summary.model_sqnr_db = None if summary.float_in_streams else model_output_sqnr(ref, out, masks)
    if summary.model_sqnr_db is None and not summary.float_in_streams:
        summary.model_sqnr_note = _no_sqnr_reason(ref, out)
    summary.timings = {"calib_run_s": t_run + time.perf_counter() - t0, "calib_fit_s": t_fit}
    if error_feedback:
        summary.timings["calib_feedback_s"] = feedback_s  # part of calib_fit_s
    return summary


def _walk(
    ex: StreamExecutor,
    plans: list[LayerPlan],
    refine: Callable[[LayerPlan], LayerOutcome],
    summary: CalibrationSummary,
    progress: Callable[[int, int, str], None] | None,
) -> tuple[float, float]:
    """Refine the layers in topological order, each on the streams as its predecessors left them; returns the
    seconds spent running onnxruntime and fitting."""
    t_run = t_fit = 0.0
    for i, plan in enumerate(sorted(plans, key=lambda p: p.node_index)):
        if progress:
            progress(i, len(plans), plan.weight)
        t0 = time.perf_counter()
        ex.advance(plan.node_index)
        t1 = time.perf_counter()
        outcome = refine(plan)
        t2 = time.perf_counter()
        ex.set_quantized(plan.weight, outcome.encoded.decoded().astype(plan.values.dtype))
        if outcome.bias_delta is not None and not ex.add_bias(plan.node_index, outcome.bias_delta):
            outcome.bias_delta = None
            if outcome.note == "bias only":  # nothing of it reaches the file
                outcome.note = "data-free: its bias input cannot take a correction, and no refit beat its levels"
        summary.outcomes[plan.weight] = outcome
        t_run += (t1 - t0) + (time.perf_counter() - t2)
        t_fit += t2 - t1
    return t_run, t_fit


def _reads_float(plan: LayerPlan, mode: CalibrationMode, compensation: float | None) -> bool:
    """Whether refitting ``plan`` reads the float stream: in independent mode it is the only one; in sequential mode
    only a target with compensation (the float layer's output on float inputs) needs it. With compensation 0 the
    target is the float weights on the quantized inputs, and the statistics the float patches would add are
    multiplied by 0 (``refit._target``): the same refit, bit for bit, without them."""
    if supported(plan.op, plan.attrs, tuple(plan.values.shape), plan.slot) is not None:
        return False
    return mode == CalibrationMode.INDEPENDENT or compensation_for(plan.op, compensation) != 0.0


@dataclasses.dataclass(frozen=True)
class _Options:
    """What :func:`calibrate` was asked for, the same for every layer."""

    mode: CalibrationMode
    refit_levels: bool
    bias_correction: bool
    compensation: float | None
    error_feedback: bool
    few: bool  # fewer than RECOMMENDED_SAMPLES: refits from fewer rows than inputs go as far as held-out rows say


def _calibrate_one(
    ex: StreamExecutor, plan: LayerPlan, opts: _Options, masks: list[np.ndarray | None]
) -> tuple[LayerOutcome, float]:
    """One layer's refit on the streams as they stand; with the seconds its error-feedback assignment took."""
    why = supported(plan.op, plan.attrs, tuple(plan.values.shape), plan.slot)
    if why is not None:
        return LayerOutcome(plan.encoded, note=f"data-free: {why}"), 0.0
    geo = LayerGeometry(plan.op, plan.attrs, tuple(plan.values.shape))
    feedback = opts.error_feedback and plan.op in FEEDBACK_OPS
    # a held-out half decides whether the feedback assignment generalises, and with few samples how far a refit
    # from fewer rows than inputs goes (refit.refit_layer's held_out_levels)
    stats = GramStats(split=feedback or opts.few)
    if opts.mode == CalibrationMode.INDEPENDENT:
        xq_all = xf_all = ex.inputs(plan.input_name, quant=False)
    else:
        xq_all = ex.inputs(plan.input_name, quant=True)
        reads_float = _reads_float(plan, opts.mode, opts.compensation)
        xf_all = ex.inputs(plan.input_name, quant=False) if reads_float else xq_all
    if plan.op != "MatMul":  # only a MatMul's rows are positions of a [batch, sequence] input
        masks = [None] * len(masks)
    cap = -(-MAX_ROWS // max(len(xf_all), 1))  # the row budget is per layer, shared by the batches
    only = len(xf_all) == 1
    real = [real_rows(x, m) for xs in (xf_all, xq_all) for x, m in zip(xs, masks, strict=True)]
    if not all(np.isfinite(x).all() for x in real):  # nothing to fit to (padding aside): the layer stays as it is
        logger.warning("%s: layer %s stays data-free", NON_FINITE, plan.weight)
        return LayerOutcome(plan.encoded, note="data-free: its input holds NaN or Inf on the calibration data"), 0.0
    for xq, xf, mask in zip(xq_all, xf_all, masks, strict=True):
        pf = patches(geo, real_rows(xf, mask), cap)
        if pf.shape[1] != geo.n_in:  # onnxruntime never ran the layer: its input came straight from the data
            raise CalibrationError(
                f"the calibration data gives layer {plan.weight} inputs of shape {tuple(xf.shape)}, which its "
                f"weight of shape {tuple(plan.values.shape)} cannot take"
            )
        stats.add(pf if xq is xf else patches(geo, real_rows(xq, mask), cap), pf, cap, only)
    lam = compensation_for(plan.op, opts.compensation)
    result = refit_layer(plan.encoded, plan.values, geo, stats, opts.refit_levels, lam, feedback, opts.few)
    if not opts.bias_correction or plan.op not in BIAS_OPS:
        result = dataclasses.replace(result, bias_delta=None)
    if result.refitted:
        note = "refitted"
    elif result.bias_delta is not None:
        note = "bias only"
    else:
        note = "data-free: no refit beat its data-free levels on the calibration data"
    outcome = LayerOutcome(
        result.encoded, result.bias_delta, result.output_sqnr_before_db, result.output_sqnr_after_db, note
    )
    return outcome, result.feedback_s
