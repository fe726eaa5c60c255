"""Encode one weight tensor: choose the representation, fit, assign, and measure the error.

Still pure numpy. The graph pass hands over an array and its output-channel axis; it gets back an
:class:`EncodedTensor` that says exactly what to store and what the decode yields.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from .assign import assign, decode
from .fit import fit
from .packing import packed_bytes
from .stats import rounding_error
from .types import Codebook, LevelDType, Method

__all__ = [
    "EncodedTensor",
    "Granularity",
    "Layout",
    "Representation",
    "alternatives",
    "encode_half",
    "encode_tensor",
    "fits_half",
    "from_groups",
    "to_groups",
]


class Granularity(enum.StrEnum):
    """Who shares a codebook. AUTO picks per tensor between the others (see :func:`encode_tensor`)."""

    AUTO = "auto"
    TENSOR = "tensor"
    CHANNEL = "channel"


class Representation(enum.StrEnum):
    TENSOR = "tensor"  # one float32 codebook for the whole tensor
    CHANNEL = "channel"  # one float16 codebook per output channel
    FLOAT16 = "float16"  # no codebook: where per-channel codebooks would cost more than the weights in float16


@dataclass(frozen=True)
class EncodedTensor:
    """What to store for one weight, and the error it was measured to have."""

    representation: Representation
    shape: tuple[int, ...]
    axis: int | None
    codebook: Codebook | None
    indices: np.ndarray | None  # uint8 [G, n] in group-view order
    half: np.ndarray | None  # float16 values for Representation.FLOAT16
    rel_error: float  # mean over output channels of squared error / channel power
    stored_bytes: int

    def decoded(self) -> np.ndarray:
        """The float32 tensor the emitted ONNX decode produces, bit for bit."""
        if self.half is not None:
            return self.half.astype(np.float32)
        assert self.codebook is not None and self.indices is not None  # invariant of the constructor
        groups = decode(self.codebook, self.indices)
        return from_groups(groups, self.shape, self.axis if self.representation == Representation.CHANNEL else None)


def to_groups(w: np.ndarray, axis: int | None) -> np.ndarray:
    """``[C, n]`` view with the channel axis first (``axis=None``: one row)."""
    if axis is None:
        return w.reshape(1, -1)
    return np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)


def from_groups(groups: np.ndarray, shape: tuple[int, ...], axis: int | None) -> np.ndarray:
    if axis is None:
        return groups.reshape(shape)
    moved = (shape[axis], *tuple(s for i, s in enumerate(shape) if i != axis))
    return np.moveaxis(groups.reshape(moved), 0, axis)


def channel_rel_error(w: np.ndarray, approx: np.ndarray, axis: int | None) -> float:
    """Mean over output channels of each channel's squared error relative to its power.

    Scale-invariant per channel, so it is the same on the raw weights and on the weights rescaled by a following
    BatchNormalization or per-channel Mul: small channels count as much as large ones, which is what the next layer
    sees once the scale is applied.
    """
    ax = axis if axis is not None and w.ndim > 1 else None
    a = to_groups(np.asarray(w, np.float32), ax)
    d = a - to_groups(np.asarray(approx, np.float32), ax)
    power = np.einsum("ij,ij->i", a, a, dtype=np.float64) / a.shape[1]
    err = np.einsum("ij,ij->i", d, d, dtype=np.float64) / a.shape[1]
    # dead channels (power ~1e-70 next to ~1e-2) carry no signal; counting them would make the mean meaningless
    ok = power > 1e-12 * float(power.max(initial=0.0))
    if not ok.any():
        return float(err.mean() > 0)
    return float(np.mean(err[ok] / power[ok]))


def _encode_codebook(w: np.ndarray, axis: int | None, bits: int, method: Method, per_channel: bool) -> EncodedTensor:
    ax = axis if per_channel else None
    groups = to_groups(w, ax)
    half = w.dtype == np.float16 or (per_channel and fits_half(w))
    ldt = LevelDType.FLOAT16 if half else LevelDType.FLOAT32
    cb = fit(groups, bits, method, ldt)
    idx = assign(cb, groups)
    rep = Representation.CHANNEL if per_channel else Representation.TENSOR
    enc = EncodedTensor(rep, w.shape, axis, cb, idx, None, 0.0, packed_bytes(w.size, bits) + cb.storage_bytes())
    err = channel_rel_error(w, enc.decoded(), axis)
    return EncodedTensor(rep, w.shape, axis, cb, idx, None, err, enc.stored_bytes)


def encode_tensor(
    w: np.ndarray,
    axis: int | None,
    bits: int,
    method: Method | str = Method.SIGMA,
    granularity: Granularity | str = Granularity.AUTO,
    channel_tolerance: float = 2.0,
) -> EncodedTensor:
    """Encode ``w`` whose output channels lie on ``axis`` (None: no channel structure).

    AUTO keeps one codebook for the tensor unless the channels disagree in scale: the case of BatchNormalization
    folded into the weights, where one codebook leaves the small channels with almost no levels. The test compares
    the per-channel error of one codebook on the raw weights with that of one codebook on the weights with every
    channel scaled to unit RMS, the same fit with the scale differences taken out; when the raw error is more than
    ``channel_tolerance`` times larger, each channel gets its own codebook. Where per-channel codebooks would take
    more bytes than the weights in float16 (few weights per channel, as in depthwise 3x3 convolutions, which are
    also the most sensitive layers), float16 is both smaller and more accurate, so it is used instead.
    """
    method = Method(method)
    granularity = Granularity(granularity)
    if axis is not None and (w.ndim < 2 or w.shape[axis] < 2):
        axis = None
    if granularity == Granularity.TENSOR or axis is None:
        return _encode_codebook(w, axis, bits, method, per_channel=False)
    if granularity == Granularity.CHANNEL:
        return _encode_codebook(w, axis, bits, method, per_channel=True)
    per_tensor = _encode_codebook(w, axis, bits, method, per_channel=False)
    if per_tensor.rel_error <= GOOD_ENOUGH or _channel_spread(w, axis) < SPREAD_FLOOR:
        return per_tensor
    if per_tensor.rel_error <= channel_tolerance * _scale_free_error(w, axis, bits, method):
        return per_tensor
    per_channel = _encode_codebook(w, axis, bits, method, per_channel=True)
    if per_channel.stored_bytes < 2 * w.size or not fits_half(w):
        return per_channel
    return encode_half(w, axis)


def encode_half(w: np.ndarray, axis: int | None) -> EncodedTensor:
    """No codebook: the weight in float16. Wins where per-channel tables would cost more than the weights."""
    half = w.astype(np.float16)
    err = channel_rel_error(w, half.astype(np.float32), axis)
    return EncodedTensor(Representation.FLOAT16, w.shape, axis, None, None, half, err, 2 * w.size)


@dataclass(frozen=True)
class Layout:
    """One way to store a weight, as the bit allocation weighs it: the error at the reference width and what one
    codebook level costs over all of its codebooks (0 for float16, whose cost does not depend on the width)."""

    representation: Representation
    rel_error: float
    table_bits: int

    @classmethod
    def of(cls, enc: EncodedTensor) -> Layout:
        cb = enc.codebook
        table = 0 if cb is None else cb.levels.shape[0] * (16 if cb.level_dtype == LevelDType.FLOAT16 else 32)
        return cls(enc.representation, enc.rel_error, table)


SAMPLE_CHANNELS = 64  # per-channel codebooks are fitted channel by channel: a sample estimates their mean error


def alternatives(
    w: np.ndarray, axis: int | None, bits: int, method: Method | str, chosen: EncodedTensor
) -> list[Layout]:
    """Every layout at ``bits`` for a weight with output channels on ``axis``, ``chosen`` first: what a bit
    allocation that also picks the layout per layer weighs (tensor and channel codebooks, and float16).

    Per-channel codebooks are independent, so their mean error is estimated on at most ``SAMPLE_CHANNELS`` evenly
    spaced channels: fitting every channel of every layer would double the pass's time for one number per layer.
    """
    found = {chosen.representation: Layout.of(chosen)}
    if axis is None or w.ndim < 2 or w.shape[axis] < 2:
        return list(found.values())
    method = Method(method)
    if Representation.TENSOR not in found:
        found[Representation.TENSOR] = Layout.of(_encode_codebook(w, axis, bits, method, per_channel=False))
    if Representation.CHANNEL not in found:
        channels = w.shape[axis]
        pick = np.unique(np.linspace(0, channels - 1, min(channels, SAMPLE_CHANNELS)).astype(np.int64))
        sample = _encode_codebook(np.take(w, pick, axis=axis), axis, bits, method, per_channel=True)
        per_channel = Layout.of(sample).table_bits // len(pick)  # bits of one level of one channel's codebook
        found[Representation.CHANNEL] = Layout(Representation.CHANNEL, sample.rel_error, per_channel * channels)
    if Representation.FLOAT16 not in found and fits_half(w) and w.dtype != np.float16:
        found[Representation.FLOAT16] = Layout.of(encode_half(w, axis))
    return [found[chosen.representation], *(v for r, v in found.items() if r != chosen.representation)]


HALF_ROUNDING_MAX = 1e-4  # float16 keeps a tensor if rounding to it costs at most this share of its power (40 dB)


def fits_half(w: np.ndarray) -> bool:
    """Float16 holds the tensor: no value beyond its range (levels stored in float16 would turn larger ones into
    Inf) and not so small that it rounds away. Below 6e-5 float16 has subnormals only, and weights of ~1e-8 round
    to 0: a layer of such weights came out all zeros with float16 levels (weight and output SQNR 0 dB), where its
    normal-range rounding costs about 1e-7 of the power."""
    if w.dtype == np.float16:
        return True
    if not bool(np.max(np.abs(w), initial=0.0) <= np.finfo(np.float16).max):
        return False
    rows = np.asarray(w).reshape(1, -1)
    power = float(np.mean(np.square(rows, dtype=np.float64)))
    return power == 0.0 or float(rounding_error(rows)[0]) <= HALF_ROUNDING_MAX * power


GOOD_ENOUGH = 1e-4  # 40 dB per channel: nothing left for per-channel codebooks to win (8 bits, mostly)
SPREAD_FLOOR = 2.0  # channels whose RMS differ by less than 2x agree well enough for one codebook


def _channel_spread(w: np.ndarray, axis: int) -> float:
    """Largest over smallest channel RMS (all-zero channels ignored): a one-pass test before the costly one."""
    groups = to_groups(w, axis).astype(np.float64)
    rms = np.sqrt(np.mean(groups * groups, axis=1))
    rms = rms[rms > 0]
    return float(rms.max() / rms.min()) if rms.size else 1.0


def _scale_free_error(w: np.ndarray, axis: int, bits: int, method: Method) -> float:
    """Per-channel error of one codebook once every channel is scaled to unit RMS."""
    groups = to_groups(w, axis).astype(np.float64)
    rms = np.sqrt(np.mean(groups * groups, axis=1, keepdims=True))
    normal = groups / np.where(rms > 0, rms, 1.0)
    cb = fit(normal.reshape(1, -1), bits, method)
    approx = decode(cb, assign(cb, normal.reshape(1, -1))).reshape(normal.shape)
    return channel_rel_error(normal, approx, 0)
