"""Train the bundled digits demo CNN in pure NumPy and export it to ONNX.

The model exists so the quantization pass has a small, realistic, fully reproducible CNN to
work on without network access or a deep-learning framework: scikit-learn's bundled 8x8
digits dataset, a few conv layers trained *with* BatchNorm, and the BatchNorm folded into the
conv weights at export (as real exported CNNs look, every output channel then carries its own
scale). Running this script twice on the same machine produces byte-identical outputs.

Usage: python models/digits/train.py
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits

OUT_DIR = Path(__file__).resolve().parent
SEED = 0
TEST_FRACTION = 0.3
EPOCHS = 40
BATCH_SIZE = 32
PEAK_LR = 2e-3
WEIGHT_DECAY = 1e-4
BN_EPS = 1e-5
BN_MOMENTUM = 0.1
N_CALIB = 64
OPSET = 13
IR_VERSION = 8  # IR 8 / opset 13 so that older onnxruntime releases can still load the file.
LABELS = ",".join(str(d) for d in range(10))
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # Fixed zip timestamps keep the .npz files byte-reproducible.

Array = np.ndarray


# ----------------------------------------------------------------------------- data


def load_splits() -> tuple[Array, Array, Array, Array]:
    """Return (x_train, y_train, x_test, y_test) as NCHW float64 in [0, 1] and int64 labels.

    The split is stratified with a fixed seed so the committed test set is stable and every
    class is represented in proportion.
    """
    digits = load_digits()
    x = (digits.images / 16.0).reshape(-1, 1, 8, 8).astype(np.float64)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=TEST_FRACTION, stratify=y, random_state=SEED)
    return x_tr, y_tr, x_te, y_te


def save_npz(path: Path, **arrays: Array) -> None:
    """Write an uncompressed .npz with fixed zip timestamps.

    np.savez stamps each member with the current time, which would make every rebuild show up
    as a binary diff in git; writing the members ourselves keeps reruns byte-identical.
    """
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_EPOCH)
            with zf.open(info, "w") as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(arr), allow_pickle=False)


# ----------------------------------------------------------------------------- layers


class Layer(Protocol):
    """Minimal layer interface: parameters and gradients are keyed by the same names."""

    params: dict[str, Array]
    grads: dict[str, Array]

    def forward(self, x: Array, train: bool) -> Array: ...

    def backward(self, dout: Array) -> Array: ...


def im2col3x3(x: Array) -> Array:
    """Unfold 3x3 / pad-1 / stride-1 patches to rows [N*H*W, C*9] ordered (c, kh, kw).

    That column order matches W.reshape(O, C*9) for ONNX's [O, C, kH, kW] weight layout, so
    the trained weights export without any transposition.
    """
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.stack([xp[:, :, i : i + h, j : j + w] for i in range(3) for j in range(3)], axis=2)
    return cols.transpose(0, 3, 4, 1, 2).reshape(n * h * w, c * 9)


def col2im3x3(dcols: Array, shape: tuple[int, ...]) -> Array:
    """Adjoint of im2col3x3: scatter-add patch gradients back onto the input grid."""
    n, c, h, w = shape
    d = dcols.reshape(n, h, w, c, 9).transpose(0, 3, 4, 1, 2)
    dxp = np.zeros((n, c, h + 2, w + 2), dtype=dcols.dtype)
    for k in range(9):
        i, j = divmod(k, 3)
        dxp[:, :, i : i + h, j : j + w] += d[:, :, k]
    return dxp[:, :, 1:-1, 1:-1]


class Conv3x3:
    """3x3 convolution, stride 1, padding 1, no bias (the following BatchNorm supplies it)."""

    def __init__(self, c_in: int, c_out: int, rng: np.random.Generator) -> None:
        std = np.sqrt(2.0 / (c_in * 9))  # He init: keeps activation scale stable under ReLU.
        self.params = {"weight": rng.normal(0.0, std, (c_out, c_in, 3, 3))}
        self.grads: dict[str, Array] = {}

    def forward(self, x: Array, train: bool) -> Array:
        n, _, h, w = x.shape
        self._shape, self._cols = x.shape, im2col3x3(x)
        wmat = self.params["weight"].reshape(self.params["weight"].shape[0], -1)
        return (self._cols @ wmat.T).reshape(n, h, w, -1).transpose(0, 3, 1, 2)

    def backward(self, dout: Array) -> Array:
        wshape = self.params["weight"].shape
        dmat = dout.transpose(0, 2, 3, 1).reshape(-1, wshape[0])
        self.grads["weight"] = (dmat.T @ self._cols).reshape(wshape)
        return col2im3x3(dmat @ self.params["weight"].reshape(wshape[0], -1), self._shape)


class BatchNorm2d:
    """Per-channel BatchNorm with running statistics (PyTorch semantics, unbiased running var)."""

    def __init__(self, channels: int) -> None:
        self.params = {"gamma": np.ones(channels), "beta": np.zeros(channels)}
        self.grads: dict[str, Array] = {}
        self.running_mean = np.zeros(channels)
        self.running_var = np.ones(channels)

    def forward(self, x: Array, train: bool) -> Array:
        g, b = (self.params[k].reshape(1, -1, 1, 1) for k in ("gamma", "beta"))
        if not train:
            mean, var = self.running_mean, self.running_var
            return g * (x - mean.reshape(1, -1, 1, 1)) / np.sqrt(var.reshape(1, -1, 1, 1) + BN_EPS) + b
        mean = x.mean(axis=(0, 2, 3), keepdims=True)
        var = x.var(axis=(0, 2, 3), keepdims=True)
        m = x.size // x.shape[1]
        self.running_mean += BN_MOMENTUM * (mean.ravel() - self.running_mean)
        self.running_var += BN_MOMENTUM * (var.ravel() * m / (m - 1) - self.running_var)
        self._inv_std = 1.0 / np.sqrt(var + BN_EPS)
        self._xhat = (x - mean) * self._inv_std
        return g * self._xhat + b

    def backward(self, dout: Array) -> Array:
        axes = (0, 2, 3)
        self.grads["gamma"] = (dout * self._xhat).sum(axis=axes)
        self.grads["beta"] = dout.sum(axis=axes)
        dxhat = dout * self.params["gamma"].reshape(1, -1, 1, 1)
        m = dout.size // dout.shape[1]
        term = m * dxhat - dxhat.sum(axis=axes, keepdims=True)
        term -= self._xhat * (dxhat * self._xhat).sum(axis=axes, keepdims=True)
        return self._inv_std * term / m


class Stateless:
    """Base for parameter-free layers so the training loop can treat every layer uniformly."""

    def __init__(self) -> None:
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}


class ReLU(Stateless):
    """Rectifier; stores the active mask for the backward pass."""

    def forward(self, x: Array, train: bool) -> Array:
        self._mask = x > 0
        return x * self._mask

    def backward(self, dout: Array) -> Array:
        return dout * self._mask


class MaxPool2(Stateless):
    """2x2 / stride-2 max pooling; gradient goes to the first maximum, like ONNX MaxPool."""

    def forward(self, x: Array, train: bool) -> Array:
        n, c, h, w = x.shape
        win = (
            x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)
        )
        self._shape, self._arg = x.shape, win.argmax(axis=-1)
        return np.take_along_axis(win, self._arg[..., None], axis=-1)[..., 0]

    def backward(self, dout: Array) -> Array:
        n, c, h, w = self._shape
        dwin = np.zeros((*dout.shape, 4), dtype=dout.dtype)
        np.put_along_axis(dwin, self._arg[..., None], dout[..., None], axis=-1)
        return dwin.reshape(n, c, h // 2, w // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)


class Flatten(Stateless):
    """NCHW -> [N, C*H*W] in C order, matching ONNX Flatten(axis=1)."""

    def forward(self, x: Array, train: bool) -> Array:
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dout: Array) -> Array:
        return dout.reshape(self._shape)


class Linear:
    """Fully connected layer with weight [out, in], i.e. ONNX Gemm with transB=1."""

    def __init__(self, n_in: int, n_out: int, rng: np.random.Generator) -> None:
        std = np.sqrt(2.0 / n_in)
        self.params = {"weight": rng.normal(0.0, std, (n_out, n_in)), "bias": np.zeros(n_out)}
        self.grads: dict[str, Array] = {}

    def forward(self, x: Array, train: bool) -> Array:
        self._x = x
        return x @ self.params["weight"].T + self.params["bias"]

    def backward(self, dout: Array) -> Array:
        self.grads["weight"] = dout.T @ self._x
        self.grads["bias"] = dout.sum(axis=0)
        return dout @ self.params["weight"]


# ----------------------------------------------------------------------------- model & training


def build_model(rng: np.random.Generator) -> list[tuple[str, Layer]]:
    """Named layer list; the names become the ONNX initializer names (PyTorch-export style)."""
    return [
        ("conv1", Conv3x3(1, 16, rng)),
        ("bn1", BatchNorm2d(16)),
        ("relu1", ReLU()),
        ("conv2", Conv3x3(16, 32, rng)),
        ("bn2", BatchNorm2d(32)),
        ("relu2", ReLU()),
        ("pool", MaxPool2()),
        ("conv3", Conv3x3(32, 64, rng)),
        ("bn3", BatchNorm2d(64)),
        ("relu3", ReLU()),
        ("flatten", Flatten()),
        ("fc1", Linear(64 * 4 * 4, 64, rng)),
        ("relu4", ReLU()),
        ("fc2", Linear(64, 10, rng)),
    ]


def forward(layers: list[tuple[str, Layer]], x: Array, train: bool) -> Array:
    """Run the layer stack; train=True uses batch statistics and caches for backward."""
    for _, layer in layers:
        x = layer.forward(x, train)
    return x


def predict(layers: list[tuple[str, Layer]], x: Array, batch: int = 256) -> Array:
    """Inference-mode logits, batched to bound the im2col memory."""
    return np.concatenate([forward(layers, x[i : i + batch], False) for i in range(0, len(x), batch)])


def softmax_xent(logits: Array, y: Array) -> tuple[float, Array]:
    """Mean cross-entropy and its gradient w.r.t. the logits (numerically stable form)."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    loss = float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean())
    p[np.arange(len(y)), y] -= 1.0
    return loss, p / len(y)


class AdamW:
    """Adam with decoupled weight decay applied to conv/linear weights only (not BN or biases)."""

    def __init__(self, layers: list[tuple[str, Layer]]) -> None:
        self.layers = layers
        self.m = {(n, k): np.zeros_like(v) for n, lay in layers for k, v in lay.params.items()}
        self.v = {key: np.zeros_like(val) for key, val in self.m.items()}
        self.t = 0

    def step(self, lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> None:
        self.t += 1
        for name, layer in self.layers:
            for k, p in layer.params.items():
                g = layer.grads[k]
                m, v = self.m[(name, k)], self.v[(name, k)]
                m += (1 - b1) * (g - m)
                v += (1 - b2) * (g * g - v)
                update = (m / (1 - b1**self.t)) / (np.sqrt(v / (1 - b2**self.t)) + eps)
                if k == "weight":
                    p -= lr * WEIGHT_DECAY * p
                p -= lr * update


def train(layers: list[tuple[str, Layer]], x: Array, y: Array, rng: np.random.Generator) -> None:
    """Mini-batch AdamW with a cosine learning-rate schedule (no warm restarts, fixed epochs).

    A fixed schedule (rather than early stopping on the test split) keeps the held-out test
    accuracy an honest estimate.
    """
    opt = AdamW(layers)
    steps_per_epoch = -(-len(x) // BATCH_SIZE)
    total = EPOCHS * steps_per_epoch
    for epoch in range(EPOCHS):
        perm = rng.permutation(len(x))
        losses = []
        for i in range(0, len(x), BATCH_SIZE):
            idx = perm[i : i + BATCH_SIZE]
            loss, dlogits = softmax_xent(forward(layers, x[idx], True), y[idx])
            for _, layer in reversed(layers):
                dlogits = layer.backward(dlogits)
            opt.step(PEAK_LR * 0.5 * (1 + np.cos(np.pi * opt.t / total)))
            losses.append(loss)
        if (epoch + 1) % 5 == 0:
            print(f"epoch {epoch + 1:3d}  train loss {np.mean(losses):.4f}")


# ----------------------------------------------------------------------------- export


def fold_batchnorm(layers: list[tuple[str, Layer]]) -> dict[str, Array]:
    """Fold each conv's following BatchNorm into per-output-channel weight scale and a bias.

    w' = w * gamma / sqrt(var + eps) and b' = beta - mean * gamma / sqrt(var + eps), which is
    what exporters do; it is also why real conv weights have a different scale per channel.
    """
    named = dict(layers)
    folded: dict[str, Array] = {}
    for conv_name, bn_name in (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")):
        conv, bn = named[conv_name], named[bn_name]
        assert isinstance(bn, BatchNorm2d)
        scale = bn.params["gamma"] / np.sqrt(bn.running_var + BN_EPS)
        folded[f"{conv_name}.weight"] = conv.params["weight"] * scale[:, None, None, None]
        folded[f"{conv_name}.bias"] = bn.params["beta"] - bn.running_mean * scale
    for fc_name in ("fc1", "fc2"):
        folded[f"{fc_name}.weight"] = named[fc_name].params["weight"]
        folded[f"{fc_name}.bias"] = named[fc_name].params["bias"]
    return {k: v.astype(np.float32) for k, v in folded.items()}


def build_nodes() -> list[onnx.NodeProto]:
    """The inference graph: Conv/Relu x2, MaxPool, Conv/Relu, Flatten, Gemm/Relu, Gemm."""
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [1, 1]}
    mk = helper.make_node
    return [
        mk("Conv", ["input", "conv1.weight", "conv1.bias"], ["conv1_out"], name="conv1", **conv),
        mk("Relu", ["conv1_out"], ["relu1_out"], name="relu1"),
        mk("Conv", ["relu1_out", "conv2.weight", "conv2.bias"], ["conv2_out"], name="conv2", **conv),
        mk("Relu", ["conv2_out"], ["relu2_out"], name="relu2"),
        mk("MaxPool", ["relu2_out"], ["pool_out"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        mk("Conv", ["pool_out", "conv3.weight", "conv3.bias"], ["conv3_out"], name="conv3", **conv),
        mk("Relu", ["conv3_out"], ["relu3_out"], name="relu3"),
        mk("Flatten", ["relu3_out"], ["flat"], name="flatten", axis=1),
        mk("Gemm", ["flat", "fc1.weight", "fc1.bias"], ["fc1_out"], name="fc1", transB=1),
        mk("Relu", ["fc1_out"], ["relu4_out"], name="relu4"),
        mk("Gemm", ["relu4_out", "fc2.weight", "fc2.bias"], ["logits"], name="fc2", transB=1),
    ]


def build_onnx(weights: dict[str, Array]) -> onnx.ModelProto:
    """Assemble the opset-13 / IR-8 model with a dynamic batch dim and stable metadata."""
    graph = helper.make_graph(
        build_nodes(),
        "digits_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=[numpy_helper.from_array(w, name) for name, w in weights.items()],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="onnx-statq models/digits/train.py",
        doc_string=(
            "Small CNN for scikit-learn's 8x8 digits (10 classes), trained in NumPy with BatchNorm "
            "folded into the conv weights. Input: NCHW float32 pixels / 16. Output: class logits."
        ),
    )
    helper.set_model_props(model, {"labels": LABELS, "preprocessing": "pixels / 16.0, float32, NCHW"})
    onnx.checker.check_model(model, full_check=True)
    return model


def ort_logits(model: onnx.ModelProto, x: Array) -> Array:
    """Logits from onnxruntime, to prove the exported graph matches the NumPy model."""
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x.astype(np.float32)})[0]


def rms_ratio(weight: Array) -> float:
    """Max/min per-output-channel RMS: how unequal the channel scales are after folding."""
    rms = np.sqrt((weight.reshape(weight.shape[0], -1).astype(np.float64) ** 2).mean(axis=1))
    return float(rms.max() / rms.min())


def main() -> None:
    """Train, export the model and write the test and calibration arrays next to this script."""
    rng = np.random.default_rng(SEED)
    x_tr, y_tr, x_te, y_te = load_splits()
    layers = build_model(rng)
    with threadpool_limits(limits=1):  # One BLAS thread: summation order, hence bytes, stay fixed.
        train(layers, x_tr, y_tr, rng)
        np_acc = float((predict(layers, x_te).argmax(axis=1) == y_te).mean())
    model = build_onnx(fold_batchnorm(layers))
    onnx.save_model(model, OUT_DIR / "digits_cnn.onnx")
    ort_acc = float((ort_logits(model, x_te).argmax(axis=1) == y_te).mean())
    calib_idx = np.sort(rng.choice(len(x_tr), size=N_CALIB, replace=False))
    save_npz(OUT_DIR / "digits_test.npz", x=x_te.astype(np.float32), y=y_te.astype(np.int64))
    save_npz(OUT_DIR / "digits_calib.npz", input=x_tr[calib_idx].astype(np.float32))
    print(f"test accuracy: numpy (unfolded) {np_acc:.4f}, onnxruntime (folded) {ort_acc:.4f}")
    for init in model.graph.initializer:
        w = numpy_helper.to_array(init)
        extra = f"  channel RMS max/min {rms_ratio(w):.2f}" if w.ndim == 4 else ""
        print(f"  {init.name:14s} {list(w.shape)}{extra}")


if __name__ == "__main__":
    main()
