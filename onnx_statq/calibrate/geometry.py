"""A layer as ``Y = P @ W_rows.T``: its weight as one row per output channel, its input as patches.

Pure numpy. The patches are the im2col of a convolution's input, or the flattened rows of a MatMul/Gemm input; the
refit (:mod:`.refit`) accumulates their Gram statistics, so a batch's patches are built only for the rows those keep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .gram import row_step

__all__ = ["LayerGeometry", "patches", "supported"]


@dataclass(frozen=True)
class LayerGeometry:
    """How to turn the layer's input into patches and its weight into rows."""

    op: str
    attrs: dict[str, Any]
    weight_shape: tuple[int, ...]

    def rows(self, w: np.ndarray) -> np.ndarray:
        if self.op == "Conv":
            return w.reshape(w.shape[0], -1)
        if self.op == "Gemm" and int(self.attrs.get("transB", 0)):
            return w
        return w.T  # MatMul B [K, N] and Gemm B [K, N]

    @property
    def n_in(self) -> int:
        """The width of a patch: what one output of the layer reads."""
        if self.op == "Conv":
            return int(np.prod(self.weight_shape[1:]))
        transposed = self.op == "Gemm" and int(self.attrs.get("transB", 0))
        return self.weight_shape[1] if transposed else self.weight_shape[0]

    def unrows(self, rows: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`rows`: the weight tensor's layout again."""
        if self.op == "Conv":
            return rows.reshape(self.weight_shape)
        if self.op == "Gemm" and int(self.attrs.get("transB", 0)):
            return rows
        return rows.T


def supported(op: str, attrs: dict[str, Any], weight_shape: tuple[int, ...], slot: int) -> str | None:
    """None if the layer can be refitted, else why not (it is then kept data-free)."""
    if slot != 1:
        return "weight is not the layer's second input"
    if op == "Conv":
        if int(attrs.get("group", 1)) != 1:
            return "grouped convolution"
        if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET") or len(weight_shape) not in (3, 4):
            return "auto_pad or a kernel that is not 1-D/2-D"
        return None
    if op == "Gemm":
        if int(attrs.get("transA", 0)) or float(attrs.get("alpha", 1.0)) != 1.0:
            return "Gemm with transA or alpha"
        return None
    if op == "MatMul":
        return None if len(weight_shape) == 2 else "batched MatMul weight"
    return f"{op} is not refitted"


def patches(geo: LayerGeometry, x: np.ndarray, row_cap: int | None = None) -> np.ndarray:
    """``[rows, n_in]`` patches whose product with ``rows(W).T`` is the layer output (without bias).

    ``row_cap``: only every ``step``-th row, ``step = ceil(rows / row_cap)``, the rows :class:`GramStats` keeps of a
    batch, gathered without building the others. A convolution's full im2col is ``n_in`` times its input: on
    PP-OCRv6 det, 156 MB per batch for a layer whose statistics keep 512 rows of it."""
    if geo.op != "Conv":
        flat = x.reshape(-1, x.shape[-1])
        return flat[:: row_step(flat.shape[0], row_cap)].astype(np.float32)
    one_d = len(geo.weight_shape) == 3
    if one_d:
        x = x[:, :, None, :]
    kh, kw = (1, geo.weight_shape[2]) if one_d else geo.weight_shape[2:]
    nd = 1 if one_d else 2
    pads = list(geo.attrs.get("pads", [0] * 2 * nd))
    strides = list(geo.attrs.get("strides", [1] * nd))
    dil = list(geo.attrs.get("dilations", [1] * nd))
    if one_d:
        pads, strides, dil = [0, pads[0], 0, pads[1]], [1, strides[0]], [1, dil[0]]
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    win = sliding_window_view(xp, ((kh - 1) * dil[0] + 1, (kw - 1) * dil[1] + 1), axis=(2, 3))
    win = win[:, :, :: strides[0], :: strides[1], :: dil[0], :: dil[1]]
    n, c, oh, ow = win.shape[:4]
    step = row_step(n * oh * ow, row_cap)
    if step == 1:
        return win.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * kh * kw).astype(np.float32)
    image, at = np.divmod(np.arange(0, n * oh * ow, step), oh * ow)  # rows in (image, y, x) order, as unstrided
    y, x_ = np.divmod(at, ow)
    return win[image, :, y, x_].reshape(image.size, c * kh * kw).astype(np.float32)
