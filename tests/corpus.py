"""A corpus of bad and hostile inputs for the CLI, generated in code (no binary fixtures in the repo).

Every case is a function ``build(ws, d) -> Case`` registered with :func:`case`. It writes its inputs under ``d/in``
(shared base models are copied there, so every case owns its files) and names the output ``d/out/q.onnx`` unless the
case is about the output path. ``tests/test_corpus.py`` runs each case through the real CLI entry point and checks:
the exit code is the expected one (or, for a successful run, the output passes the ONNX checker and loads in
onnxruntime), no traceback, exactly one line on stderr for an error, no output and no temp file left behind, and every
file under ``d/in`` byte-identical afterwards.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Exit codes, as documented in the README and carried by onnx_statq.errors.
OK, BAD_OPTION, BAD_MODEL, BAD_EXTERNAL, NO_WEIGHTS, BAD_OUTPUT, UNSUPPORTED, BAD_CALIB = 0, 2, 3, 4, 5, 6, 7, 8

IN_DIM, HID, OUT_DIM = 64, 64, 32  # two MatMul weights of 4096 and 2048 elements: both above the default min-size


@dataclass
class Case:
    argv: list[str]
    expect: int | frozenset[int]
    check: Callable[[Path], None] | None = None  # extra check of a successful output (given its path)
    output: Path | None = None  # the -o path, when the case sets it


Builder = Callable[["Workspace", Path], Case]
CASES: dict[str, Builder] = {}
SUBPROCESS: set[str] = set()


def case(name: str, subprocess: bool = False) -> Callable[[Builder], Builder]:
    def register(fn: Builder) -> Builder:
        assert name not in CASES, name
        CASES[name] = fn
        if subprocess:
            SUBPROCESS.add(name)
        return fn

    return register


# ---------------------------------------------------------------------------------------------------------------------
# Tiny models


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    inits: list[onnx.TensorProto],
    opset: int = 13,
    ir: int = 8,
    extra_opsets: dict[str, int] | None = None,
) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, inits)
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    m = helper.make_model(g, opset_imports=imports, producer_name="statq-corpus")
    m.ir_version = ir
    return m


def mlp(
    dtype: type = np.float32,
    w1: np.ndarray | None = None,
    w2: np.ndarray | None = None,
    opset: int = 13,
    ir: int = 8,
    x_shape: list | None = None,
) -> onnx.ModelProto:
    """x[N, 64] -> MatMul w1[64, 64] -> Relu -> MatMul w2[64, 32] -> y."""
    rng = np.random.default_rng(7)
    w1 = (rng.standard_normal((IN_DIM, HID)) * 0.1).astype(dtype) if w1 is None else w1
    w2 = (rng.standard_normal((HID, OUT_DIM)) * 0.1).astype(dtype) if w2 is None else w2
    et = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    x = helper.make_tensor_value_info("x", et, x_shape or ["N", IN_DIM])
    y = helper.make_tensor_value_info("y", et, [*(x_shape or ["N", IN_DIM])[:-1], OUT_DIM])
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
    ]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]
    return make_model(nodes, [x], [y], inits, opset=opset, ir=ir)


def one_matmul(w: onnx.TensorProto, x_type: int = TensorProto.FLOAT, opset: int = 13) -> onnx.ModelProto:
    """x[N, rows] -> MatMul w -> y: a model whose only weight is ``w``."""
    rows, cols = w.dims
    x = helper.make_tensor_value_info("x", x_type, ["N", rows])
    y = helper.make_tensor_value_info("y", x_type, ["N", cols])
    return make_model([helper.make_node("MatMul", ["x", w.name], ["y"], name="mm")], [x], [y], [w], opset=opset)


class Workspace:
    """The session's corpus folder and the base models every case copies from."""

    def __init__(self, root: Path) -> None:
        self.root = root
        base = root / "_base"
        base.mkdir(parents=True, exist_ok=True)
        self.mlp = base / "mlp.onnx"
        onnx.save(mlp(), self.mlp)
        self.mlp_bytes = self.mlp.read_bytes()

    def case_dir(self, name: str) -> Path:
        d = self.root / name
        (d / "in").mkdir(parents=True)
        (d / "out").mkdir()
        return d


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def _write(path: Path, data: bytes | str) -> Path:
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


def _base(ws: Workspace, d: Path, name: str = "m.onnx") -> Path:
    return _write(d / "in" / name, ws.mlp_bytes)


def _run(model: Path, d: Path, *extra: str) -> list[str]:
    return [str(model), "-o", str(d / "out" / "q.onnx"), *extra]


# ---------------------------------------------------------------------------------------------------------------------
# Checks of a successful output


def ort_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def loads(path: Path) -> None:
    """The output passes the full ONNX checker and onnxruntime creates a session for it."""
    onnx.checker.check_model(onnx.load(path), full_check=True)
    ort_session(path)


def same_outputs(src: Path, feeds: dict[str, np.ndarray], exact: bool = False, min_sqnr: float = 15.0):
    """A check: the output model computes what ``src`` computes on ``feeds`` (bit for bit with ``exact``)."""

    def check(out: Path) -> None:
        loads(out)
        a = ort_session(src).run(None, feeds)
        b = ort_session(out).run(None, feeds)
        for x, y in zip(a, b, strict=True):
            if exact:
                np.testing.assert_array_equal(x, y)
            else:
                x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
                noise = np.sum((x64 - y64) ** 2)
                assert noise == 0 or 10 * np.log10(np.sum(x64**2) / noise) > min_sqnr

    return check


def _x(n: int = 3, dtype: type = np.float32) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((n, IN_DIM)).astype(dtype)}


# ---------------------------------------------------------------------------------------------------------------------
# Model files that are not (valid) ONNX: exit 3


@case("empty_file")
def _(ws, d):
    return Case(_run(_write(d / "in" / "m.onnx", b""), d), BAD_MODEL)


@case("truncated_1_byte")
def _(ws, d):
    return Case(_run(_write(d / "in" / "m.onnx", ws.mlp_bytes[:1]), d), BAD_MODEL)


@case("truncated_half", subprocess=True)
def _(ws, d):
    return Case(_run(_write(d / "in" / "m.onnx", ws.mlp_bytes[: len(ws.mlp_bytes) // 2]), d), BAD_MODEL)


@case("truncated_last_byte")
def _(ws, d):
    return Case(_run(_write(d / "in" / "m.onnx", ws.mlp_bytes[:-1]), d), BAD_MODEL)


def _flip(data: bytes, pos: int, bit: int = 0) -> bytes:
    b = bytearray(data)
    b[pos] ^= 1 << bit
    return bytes(b)


@case("bitflip_op_type")
def _(ws, d):
    """'MatMul' becomes 'MatMum': parses, fails the checker."""
    pos = ws.mlp_bytes.index(b"MatMul") + 5
    return Case(_run(_write(d / "in" / "m.onnx", _flip(ws.mlp_bytes, pos, 3)), d), BAD_MODEL)


@case("bitflip_first_tag")
def _(ws, d):
    return Case(_run(_write(d / "in" / "m.onnx", _flip(ws.mlp_bytes, 0, 7)), d), BAD_MODEL)


@case("bitflip_in_weight_data")
def _(ws, d):
    """A flipped exponent bit inside w1's raw data: still a valid model, which quantizes."""
    m = onnx.load_from_string(ws.mlp_bytes)
    raw = m.graph.initializer[0].raw_data
    pos = ws.mlp_bytes.index(raw) + 4 * 100 + 3  # the top byte of the 101st float
    path = _write(d / "in" / "m.onnx", _flip(ws.mlp_bytes, pos, 6))
    return Case(_run(path, d), OK, check=loads)


@case("bitflip_random")
def _(ws, d):
    """Eight seeded random bit flips: whatever they hit, the result is a clean error or a valid model."""
    rng = np.random.default_rng(1234)
    data = ws.mlp_bytes
    for pos in rng.integers(0, len(data), size=8):
        data = _flip(data, int(pos), int(rng.integers(0, 8)))
    path = _write(d / "in" / "m.onnx", data)
    return Case(_run(path, d), frozenset({OK, BAD_MODEL, NO_WEIGHTS}), check=loads)


@case("random_bytes")
def _(ws, d):
    data = np.random.default_rng(5).integers(0, 256, size=4096, dtype=np.uint8).tobytes()
    return Case(_run(_write(d / "in" / "m.onnx", data), d), BAD_MODEL)


@case("tensorproto_as_onnx")
def _(ws, d):
    t = numpy_helper.from_array(np.ones((64, 32), np.float32), "w")
    return Case(_run(_write(d / "in" / "m.onnx", t.SerializeToString()), d), BAD_MODEL)


@case("graphproto_as_onnx")
def _(ws, d):
    g = onnx.load_from_string(ws.mlp_bytes).graph
    return Case(_run(_write(d / "in" / "m.onnx", g.SerializeToString()), d), BAD_MODEL)


@case("nodeproto_as_onnx")
def _(ws, d):
    n = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    return Case(_run(_write(d / "in" / "m.onnx", n.SerializeToString()), d), BAD_MODEL)


@case("json_as_onnx")
def _(ws, d):
    return Case(_run(_write(d / "in" / "m.onnx", json.dumps({"graph": {"node": []}})), d), BAD_MODEL)


@case("zip_as_onnx")
def _(ws, d):
    p = d / "in" / "m.onnx"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("model.onnx", ws.mlp_bytes)
    return Case(_run(p, d), BAD_MODEL)


@case("model_missing")
def _(ws, d):
    return Case(_run(d / "in" / "nope.onnx", d), BAD_MODEL)


@case("model_is_dev_null")
def _(ws, d):
    return Case(_run(Path(os.devnull), d), BAD_MODEL)


@case("checker_undefined_input")
def _(ws, d):
    m = mlp()
    m.graph.node[1].input[0] = "nowhere"
    return Case(_run(_save(m, d / "in" / "m.onnx"), d), BAD_MODEL)


@case("checker_duplicate_initializer")
def _(ws, d):
    m = mlp()
    m.graph.initializer.append(m.graph.initializer[0])
    return Case(_run(_save(m, d / "in" / "m.onnx"), d), BAD_MODEL)


@case("opset_from_the_future")
def _(ws, d):
    return Case(_run(_save(mlp(opset=999), d / "in" / "m.onnx"), d), frozenset({BAD_MODEL, UNSUPPORTED}))


def _list_initializers_as_inputs(m: onnx.ModelProto) -> onnx.ModelProto:
    for t in m.graph.initializer:
        m.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return m


@case("opset_6_unsupported")
def _(ws, d):
    m = _list_initializers_as_inputs(mlp(opset=6, ir=3))
    return Case(_run(_save(m, d / "in" / "m.onnx"), d), UNSUPPORTED)


@case("ir3_initializers_listed_as_inputs")
def _(ws, d):
    """IR 3 (old model zoos): every initializer must be a graph input, the new codebooks too."""
    src = _save(_list_initializers_as_inputs(mlp(opset=8, ir=3)), d / "in" / "m.onnx")
    return Case(_run(src, d), OK, check=same_outputs(src, _x()))


@case("no_default_opset")
def _(ws, d):
    """Only a custom domain: nothing the pass can decode with standard ops."""
    w = numpy_helper.from_array(np.ones((64, 32), np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])
    node = helper.make_node("MyOp", ["x", "w"], ["y"], domain="my.domain")
    g = helper.make_graph([node], "g", [x], [y], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("my.domain", 1)])
    return Case(_run(_save(m, d / "in" / "m.onnx"), d), frozenset({UNSUPPORTED, NO_WEIGHTS}))


# ---------------------------------------------------------------------------------------------------------------------
# Graphs and weights that are odd but valid


@case("empty_graph")
def _(ws, d):
    m = make_model([], [], [], [])
    return Case(_run(_save(m, d / "in" / "m.onnx"), d), NO_WEIGHTS)


@case("initializers_without_nodes")
def _(ws, d):
    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    y = helper.make_tensor_value_info("w", TensorProto.FLOAT, [64, 64])
    m = make_model([], [], [y], [w])
    return Case(_run(_save(m, d / "in" / "m.onnx"), d), NO_WEIGHTS)


@case("nan_weights_only", subprocess=True)
def _(ws, d):
    w = np.full((64, 64), np.nan, np.float32)
    return Case(_run(_save(one_matmul(numpy_helper.from_array(w, "w")), d / "in" / "m.onnx"), d), NO_WEIGHTS)


@case("inf_weights_only")
def _(ws, d):
    w = np.ones((64, 64), np.float32)
    w[3, 4] = np.inf
    w[5, 6] = -np.inf
    return Case(_run(_save(one_matmul(numpy_helper.from_array(w, "w")), d / "in" / "m.onnx"), d), NO_WEIGHTS)


@case("nan_and_good_weight")
def _(ws, d):
    """The NaN weight stays in float, the other one is quantized; the NaN output is verified without a crash."""
    w1 = (np.random.default_rng(3).standard_normal((IN_DIM, HID)) * 0.1).astype(np.float32)
    w1[0, 0] = np.nan
    src = _save(mlp(w1=w1), d / "in" / "m.onnx")

    def check(out: Path) -> None:
        loads(out)
        names = {t.name for t in onnx.load(out).graph.initializer}
        assert "w1" in names and "w2" not in names  # w1 kept in float, w2 encoded

    return Case(_run(src, d), OK, check=check)


@case("constant_weights", subprocess=True)
def _(ws, d):
    w1 = np.full((IN_DIM, HID), 0.25, np.float32)
    w2 = np.full((HID, OUT_DIM), -0.5, np.float32)
    src = _save(mlp(w1=w1, w2=w2), d / "in" / "m.onnx")
    return Case(_run(src, d), OK, check=same_outputs(src, _x(), exact=True))


@case("zero_weights")
def _(ws, d):
    src = _save(mlp(w1=np.zeros((IN_DIM, HID), np.float32)), d / "in" / "m.onnx")
    return Case(_run(src, d), OK, check=same_outputs(src, _x(), exact=True))


@case("fewer_distinct_than_k")
def _(ws, d):
    """Three distinct values at 4 bits: the codebook holds them exactly, so the model is unchanged bit for bit."""
    rng = np.random.default_rng(2)
    w1 = rng.choice(np.array([-0.3, 0.0, 0.7], np.float32), size=(IN_DIM, HID))
    w2 = rng.choice(np.array([-1.0, 1.0], np.float32), size=(HID, OUT_DIM))
    src = _save(mlp(w1=w1, w2=w2), d / "in" / "m.onnx")
    return Case(_run(src, d, "--bits", "4", "--allocation", "fixed"), OK, check=same_outputs(src, _x(), exact=True))


@case("distinct_per_channel_below_k")
def _(ws, d):
    """Each output channel holds 2 values on its own scale: per-channel (float16) codebooks are exact."""
    rng = np.random.default_rng(4)
    scale = np.exp2(rng.integers(-6, 2, size=(1, HID))).astype(np.float32)  # representable in float16
    w1 = (rng.choice(np.array([-1.0, 1.0], np.float32), size=(IN_DIM, HID)) * scale).astype(np.float32)
    src = _save(mlp(w1=w1), d / "in" / "m.onnx")
    argv = _run(src, d, "--granularity", "channel", "--bits", "2", "--allocation", "fixed", "--min-size", "4096")
    return Case(argv, OK, check=same_outputs(src, _x(), exact=True))


@case("huge_finite_outlier")
def _(ws, d):
    """One weight of 1e30 (a flipped exponent bit): float32 squares overflow; the codebook must still be finite."""
    rng = np.random.default_rng(6)
    w1 = (rng.standard_normal((IN_DIM, HID)) * 0.1).astype(np.float32)
    w1[5, 7] = 1e30
    src = _save(mlp(w1=w1), d / "in" / "m.onnx")
    return Case(_run(src, d, "--bits", "4"), OK, check=same_outputs(src, _x()))


@case("beyond_float16_range_per_channel")
def _(ws, d):
    """Per-channel codebooks are float16, whose range ends at 65504: larger weights need float32 levels."""
    rng = np.random.default_rng(8)
    w1 = (rng.standard_normal((IN_DIM, HID)) * np.exp2(rng.integers(-4, 20, size=(1, HID)))).astype(np.float32)
    src = _save(mlp(w1=w1), d / "in" / "m.onnx")
    args = ("--granularity", "channel", "--bits", "4", "--allocation", "fixed")  # the tables here outweigh the indices
    return Case(_run(src, d, *args), OK, check=same_outputs(src, _x()))


@case("float64_beyond_float32_range")
def _(ws, d):
    """A double weight past float32's range cannot be a float32 codebook: it is left in float64."""
    w = np.random.default_rng(0).standard_normal((64, 64)) * 1e300
    m = one_matmul(numpy_helper.from_array(w, "w"), x_type=TensorProto.DOUBLE)
    return Case(_run(_save(m, d / "in" / "m.onnx"), d), NO_WEIGHTS)


@case("float16_weights")
def _(ws, d):
    src = _save(mlp(dtype=np.float16), d / "in" / "m.onnx")
    return Case(_run(src, d), OK, check=same_outputs(src, _x(dtype=np.float16)))


@case("float64_weights")
def _(ws, d):
    src = _save(mlp(dtype=np.float64), d / "in" / "m.onnx")
    return Case(_run(src, d), OK, check=same_outputs(src, _x(dtype=np.float64)))


def _bf16(values: np.ndarray, name: str) -> onnx.TensorProto:
    bits = (np.asarray(values, np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return helper.make_tensor(name, TensorProto.BFLOAT16, values.shape, bits.tobytes(), raw=True)


@case("bfloat16_weights_only")
def _(ws, d):
    w = _bf16(np.random.default_rng(0).standard_normal((64, 64)), "w")
    m = one_matmul(w, x_type=TensorProto.BFLOAT16)
    return Case(_run(_save(m, d / "in" / "m.onnx"), d), NO_WEIGHTS)


@case("bfloat16_table_beside_float_weights", subprocess=True)
def _(ws, d):
    """A bfloat16 Gather table is left alone (and stays bfloat16); the float MatMul weights are quantized."""
    m = mlp()
    table = _bf16(np.random.default_rng(0).standard_normal((100, 16)), "table")
    m.graph.initializer.append(table)
    m.graph.input.append(helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"]))
    m.graph.node.append(helper.make_node("Gather", ["table", "ids"], ["emb"], name="embed"))
    m.graph.output.append(helper.make_tensor_value_info("emb", TensorProto.BFLOAT16, ["N", 16]))
    src = _save(m, d / "in" / "m.onnx")

    def check(out: Path) -> None:
        loads(out)
        q = onnx.load(out)
        kept = {t.name: t for t in q.graph.initializer}
        assert kept["table"].data_type == TensorProto.BFLOAT16
        assert kept["table"].raw_data == table.raw_data
        assert "w1" not in kept

    return Case(_run(src, d), OK, check=check)


@case("string_input_beside_weights")
def _(ws, d):
    """A string input that random verification inputs cannot be made for: verification is skipped, not a crash."""
    m = mlp()
    m.graph.input.append(helper.make_tensor_value_info("s", TensorProto.STRING, ["N"]))
    m.graph.node.append(helper.make_node("Identity", ["s"], ["s_out"], name="pass_string"))
    m.graph.output.append(helper.make_tensor_value_info("s_out", TensorProto.STRING, ["N"]))
    return Case(_run(_save(m, d / "in" / "m.onnx"), d), OK, check=loads)


@case("names_that_collide_with_the_decode")
def _(ws, d):
    """The model already uses the names the decode nodes would take (statq0.levels, statq0/cast0, ...)."""
    m = mlp()
    m.graph.node[0].output[0] = "statq0.levels"
    m.graph.node[1].input[0] = "statq0.levels"
    m.graph.node[0].name, m.graph.node[1].name = "statq0/cast0", "statq1/gather0"
    src = _save(m, d / "in" / "m.onnx")
    return Case(_run(src, d), OK, check=same_outputs(src, _x()))


@case("weight_also_graph_input")
def _(ws, d):
    """IR 3 style: the only weight is also a graph input, so it can be overridden at run time and is left alone."""
    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    m = one_matmul(w)
    m.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [64, 64]))
    return Case(_run(_save(m, d / "in" / "m.onnx"), d), NO_WEIGHTS)


@case("overridable_weight_beside_others")
def _(ws, d):
    """IR 8 with w1 listed as a graph input: w1 stays an overridable float input, w2 is quantized."""
    m = mlp()
    m.graph.input.append(helper.make_tensor_value_info("w1", TensorProto.FLOAT, [IN_DIM, HID]))
    src = _save(m, d / "in" / "m.onnx")

    def check(out: Path) -> None:
        same_outputs(src, _x())(out)
        q = onnx.load(out)
        assert [i.name for i in q.graph.input] == ["x", "w1"]
        assert "w1" in {t.name for t in q.graph.initializer} and "w2" not in {t.name for t in q.graph.initializer}

    return Case(_run(src, d), OK, check=check)


@case("string_output_beside_weights")
def _(ws, d):
    """A string output (class labels): verification compares it for equality instead of crashing."""
    m = mlp()
    m.graph.initializer.append(helper.make_tensor("labels", TensorProto.STRING, [3], [b"a", b"b", b"c"]))
    m.graph.node.append(helper.make_node("Identity", ["labels"], ["names"], name="labels"))
    m.graph.output.append(helper.make_tensor_value_info("names", TensorProto.STRING, [3]))
    return Case(_run(_save(m, d / "in" / "m.onnx"), d), OK, check=loads)


@case("weights_below_min_size")
def _(ws, d):
    w = numpy_helper.from_array(np.ones((8, 8), np.float32), "w")
    return Case(_run(_save(one_matmul(w), d / "in" / "m.onnx"), d), NO_WEIGHTS)


@case("integer_weights_only")
def _(ws, d):
    w = numpy_helper.from_array(np.ones((64, 64), np.int32), "w")
    m = one_matmul(w, x_type=TensorProto.INT32)
    return Case(_run(_save(m, d / "in" / "m.onnx"), d), NO_WEIGHTS)


@case("huge_initializer_without_data")
def _(ws, d):
    """dims claim 10^12 elements, no data at all."""
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1_000_000, 1_000_000])
    return Case(_run(_save(one_matmul(t), d / "in" / "m.onnx"), d), BAD_MODEL)


@case("huge_initializer_short_data")
def _(ws, d):
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1_000_000, 1_000_000], raw_data=b"\0" * 64)
    return Case(_run(_save(one_matmul(t), d / "in" / "m.onnx"), d), BAD_MODEL)


@case("huge_initializer_external")
def _(ws, d):
    """External data that claims 4 TB in a 64-byte file."""
    _write(d / "in" / "w.data", b"\0" * 64)
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1_000_000, 1_000_000])
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="w.data")
    return Case(_run(_save(one_matmul(t), d / "in" / "m.onnx"), d), frozenset({BAD_EXTERNAL, BAD_MODEL}))


@case("huge_graph_input", subprocess=True)
def _(ws, d):
    """An input declared [10^6, 10^6, 64]: the weights quantize; random inputs that big cannot be made."""
    m = mlp(x_shape=[1_000_000, 1_000_000, IN_DIM])
    return Case(_run(_save(m, d / "in" / "m.onnx"), d), OK, check=loads)


@case("graph_input_dims_overflow")
def _(ws, d):
    """Dims whose product overflows int64."""
    m = mlp(x_shape=[2**40, 2**40, IN_DIM])
    return Case(_run(_save(m, d / "in" / "m.onnx"), d), OK, check=loads)


# ---------------------------------------------------------------------------------------------------------------------
# External data: exit 4 for anything missing or outside the model's folder


def _external(ws: Workspace, folder: Path, location: str = "m.data") -> Path:
    """The base model saved with every tensor in ``m.data``, then the location rewritten to ``location``."""
    m = onnx.load_from_string(ws.mlp_bytes)
    onnx.save_model(m, folder / "m.onnx", save_as_external_data=True, location="m.data", size_threshold=0)
    m2 = onnx.load(folder / "m.onnx", load_external_data=False)
    for t in m2.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    return _save(m2, folder / "m.onnx")


@case("external_data_ok")
def _(ws, d):
    src = _external(ws, d / "in")
    return Case(_run(src, d), OK, check=loads)


@case("external_data_missing")
def _(ws, d):
    return Case(_run(_external(ws, d / "in", "gone.data"), d), BAD_EXTERNAL)


@case("external_data_absolute_path")
def _(ws, d):
    return Case(_run(_external(ws, d / "in", str((d / "in" / "m.data").resolve())), d), BAD_EXTERNAL)


@case("external_data_etc_passwd")
def _(ws, d):
    return Case(_run(_external(ws, d / "in", "/etc/passwd"), d), BAD_EXTERNAL)


@case("external_data_dotdot")
def _(ws, d):
    (d / "in" / "sub").mkdir()
    src = _external(ws, d / "in" / "sub")
    (d / "in" / "sub" / "m.data").rename(d / "in" / "m.data")
    return Case(_run(_external_rewrite(src, "../m.data"), d), BAD_EXTERNAL)


def _external_rewrite(path: Path, location: str) -> Path:
    m = onnx.load(path, load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    return _save(m, path)


@case("external_data_symlink_out")
def _(ws, d):
    (d / "in" / "sub").mkdir()
    src = _external(ws, d / "in" / "sub")
    (d / "in" / "sub" / "m.data").rename(d / "in" / "outside.data")
    os.symlink(d / "in" / "outside.data", d / "in" / "sub" / "m.data")
    return Case(_run(src, d), BAD_EXTERNAL)


@case("external_data_symlinked_folder")
def _(ws, d):
    """A plain relative location under a folder that is a symlink pointing elsewhere."""
    (d / "in" / "elsewhere").mkdir()
    (d / "in" / "sub").mkdir()
    src = _external(ws, d / "in" / "sub", "data/m.data")
    (d / "in" / "sub" / "m.data").rename(d / "in" / "elsewhere" / "m.data")
    os.symlink(d / "in" / "elsewhere", d / "in" / "sub" / "data")
    return Case(_run(src, d), BAD_EXTERNAL)


@case("external_data_empty_location")
def _(ws, d):
    return Case(_run(_external(ws, d / "in", ""), d), BAD_EXTERNAL)


@case("external_data_truncated_file")
def _(ws, d):
    src = _external(ws, d / "in")
    data = d / "in" / "m.data"
    data.write_bytes(data.read_bytes()[:100])
    return Case(_run(src, d), frozenset({BAD_EXTERNAL}))


@case("external_data_offset_past_end")
def _(ws, d):
    src = _external(ws, d / "in")
    m = onnx.load(src, load_external_data=False)
    for e in m.graph.initializer[0].external_data:
        if e.key == "offset":
            e.value = str(10**9)
    return Case(_run(_save(m, src), d), BAD_EXTERNAL)


@case("external_data_is_a_folder")
def _(ws, d):
    src = _external(ws, d / "in")
    (d / "in" / "m.data").unlink()
    (d / "in" / "m.data").mkdir()
    return Case(_run(src, d), BAD_EXTERNAL)


# ---------------------------------------------------------------------------------------------------------------------
# Models that are already quantized: exit 5, nothing to do


def _qdq_by_onnxruntime(ws: Workspace, path: Path) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([_x(4) for _ in range(2)])

        def get_next(self):  # type: ignore[override]
            return next(self.items, None)

    quantize_static(
        str(ws.mlp),
        str(path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
    )
    return path


@case("qdq_from_onnxruntime")
def _(ws, d):
    return Case(_run(_qdq_by_onnxruntime(ws, d / "in" / "m.onnx"), d), NO_WEIGHTS)


@case("dynamic_quant_from_onnxruntime")
def _(ws, d):
    from onnxruntime.quantization import quantize_dynamic

    path = d / "in" / "m.onnx"
    quantize_dynamic(str(ws.mlp), str(path))
    return Case(_run(path, d), NO_WEIGHTS)


@case("qdq_hand_built")
def _(ws, d):
    """int8 weights -> DequantizeLinear -> MatMul."""
    q = numpy_helper.from_array(np.random.default_rng(0).integers(-127, 127, (64, 64)).astype(np.int8), "wq")
    scale = numpy_helper.from_array(np.array(0.01, np.float32), "scale")
    zero = numpy_helper.from_array(np.array(0, np.int8), "zero")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "scale", "zero"], ["w"], name="dq"),
        helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
    ]
    return Case(_run(_save(make_model(nodes, [x], [y], [q, scale, zero]), d / "in" / "m.onnx"), d), NO_WEIGHTS)


@case("fake_quant_hand_built")
def _(ws, d):
    """float weights -> QuantizeLinear -> DequantizeLinear -> MatMul (QAT export)."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32), "w")
    scale = numpy_helper.from_array(np.array(0.02, np.float32), "scale")
    zero = numpy_helper.from_array(np.array(0, np.int8), "zero")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])
    nodes = [
        helper.make_node("QuantizeLinear", ["w", "scale", "zero"], ["wq"], name="q"),
        helper.make_node("DequantizeLinear", ["wq", "scale", "zero"], ["wdq"], name="dq"),
        helper.make_node("MatMul", ["x", "wdq"], ["y"], name="mm"),
    ]
    return Case(_run(_save(make_model(nodes, [x], [y], [w, scale, zero]), d / "in" / "m.onnx"), d), NO_WEIGHTS)


@case("matmulnbits_contrib_op")
def _(ws, d):
    """com.microsoft MatMulNBits with 4-bit packed weights (what onnxruntime's int4 weight quantizer writes)."""
    k, n, block = 64, 64, 32
    blob = numpy_helper.from_array(
        np.random.default_rng(0).integers(0, 256, (n, k // block, block // 2)).astype(np.uint8), "wq"
    )
    scales = numpy_helper.from_array(np.full(n * (k // block), 0.01, np.float32), "scales")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n])
    node = helper.make_node(
        "MatMulNBits",
        ["x", "wq", "scales"],
        ["y"],
        name="mm",
        domain="com.microsoft",
        K=k,
        N=n,
        bits=4,
        block_size=block,
    )
    m = make_model([node], [x], [y], [blob, scales], extra_opsets={"com.microsoft": 1})
    return Case(_run(_save(m, d / "in" / "m.onnx"), d), NO_WEIGHTS)


@case("statq_output_again", subprocess=True)
def _(ws, d):
    """onnx-statq's own output, fed back in."""
    from onnx_statq import QuantConfig, StatqPass

    q = StatqPass(QuantConfig(bits=4))(onnx.load_from_string(ws.mlp_bytes)).model
    return Case(_run(_save(q, d / "in" / "m.onnx"), d), NO_WEIGHTS)


# ---------------------------------------------------------------------------------------------------------------------
# Calibration data that does not match the model: exit 8


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    with path.open("wb") as fh:
        np.savez(fh, **arrays)
    return path


def _calib(ws: Workspace, d: Path, calib: Path | str, expect: int = BAD_CALIB, **kw) -> Case:
    return Case(_run(_base(ws, d), d, "--calib", str(calib)), expect, **kw)


@case("calib_ok")
def _(ws, d):
    calib = _npz(d / "in" / "c.npz", x=np.random.default_rng(0).standard_normal((16, IN_DIM)).astype(np.float32))
    return _calib(ws, d, calib, OK, check=loads)


@case("calib_missing_input", subprocess=True)
def _(ws, d):
    return _calib(ws, d, _npz(d / "in" / "c.npz", input=np.zeros((4, IN_DIM), np.float32)))


@case("calib_extra_input")
def _(ws, d):
    arrays = {"x": np.zeros((4, IN_DIM), np.float32), "mask": np.zeros((4, IN_DIM), np.float32)}
    return _calib(ws, d, _npz(d / "in" / "c.npz", **arrays))


@case("calib_wrong_dtype_complex")
def _(ws, d):
    return _calib(ws, d, _npz(d / "in" / "c.npz", x=np.zeros((4, IN_DIM), np.complex64)))


@case("calib_wrong_dtype_string")
def _(ws, d):
    return _calib(ws, d, _npz(d / "in" / "c.npz", x=np.full((4, IN_DIM), "a")))


@case("calib_wrong_shape")
def _(ws, d):
    return _calib(ws, d, _npz(d / "in" / "c.npz", x=np.zeros((4, IN_DIM + 1), np.float32)))


@case("calib_wrong_rank")
def _(ws, d):
    return _calib(ws, d, _npz(d / "in" / "c.npz", x=np.zeros((4, 2, IN_DIM), np.float32)))


@case("calib_scalar_array")
def _(ws, d):
    return _calib(ws, d, _npz(d / "in" / "c.npz", x=np.array(1.0, np.float32)))


@case("calib_zero_samples")
def _(ws, d):
    return _calib(ws, d, _npz(d / "in" / "c.npz", x=np.zeros((0, IN_DIM), np.float32)))


@case("calib_empty_npz")
def _(ws, d):
    return _calib(ws, d, _npz(d / "in" / "c.npz"))


@case("calib_not_an_npz")
def _(ws, d):
    return _calib(ws, d, _write(d / "in" / "c.npz", "x = [1, 2, 3]\n"))


@case("calib_is_the_model")
def _(ws, d):
    src = _base(ws, d)
    return Case(_run(src, d, "--calib", str(src)), BAD_CALIB)


@case("calib_npy_not_npz")
def _(ws, d):
    p = d / "in" / "c.npy"
    with p.open("wb") as fh:
        np.save(fh, np.zeros((4, IN_DIM), np.float32))
    return _calib(ws, d, p)


@case("calib_pickled_objects")
def _(ws, d):
    return _calib(ws, d, _npz(d / "in" / "c.npz", x=np.array([{"a": 1}, None], dtype=object)))


@case("calib_truncated_npz")
def _(ws, d):
    p = _npz(d / "in" / "c.npz", x=np.zeros((16, IN_DIM), np.float32))
    p.write_bytes(p.read_bytes()[:300])
    return _calib(ws, d, p)


@case("calib_nan_values")
def _(ws, d):
    x = np.random.default_rng(0).standard_normal((8, IN_DIM)).astype(np.float32)
    x[2, 3] = np.nan
    return _calib(ws, d, _npz(d / "in" / "c.npz", x=x))


@case("calib_missing_path")
def _(ws, d):
    return _calib(ws, d, d / "in" / "nothing.npz")


@case("calib_folder_empty")
def _(ws, d):
    (d / "in" / "calib").mkdir()
    return _calib(ws, d, d / "in" / "calib")


@case("calib_folder_with_bad_file")
def _(ws, d):
    folder = d / "in" / "calib"
    folder.mkdir()
    _npz(folder / "a.npz", x=np.zeros((2, IN_DIM), np.float32))
    _write(folder / "b.npz", b"PK\x03\x04 this is not a zip")
    return _calib(ws, d, folder)


@case("calib_folder_with_pickle")
def _(ws, d):
    folder = d / "in" / "calib"
    folder.mkdir()
    _npz(folder / "a.npz", x=np.array([object()], dtype=object))
    return _calib(ws, d, folder)


# ---------------------------------------------------------------------------------------------------------------------
# Output paths that cannot or must not be written: exit 6


def _out(ws: Workspace, d: Path, out: Path | str, expect: int = BAD_OUTPUT, *extra: str) -> Case:
    return Case([str(_base(ws, d)), "-o", str(out), *extra], expect, output=Path(out))


@case("output_folder_missing")
def _(ws, d):
    return _out(ws, d, d / "out" / "no" / "such" / "q.onnx")


@case("output_parent_is_a_file")
def _(ws, d):
    return _out(ws, d, _write(d / "in" / "file.txt", "x") / "q.onnx")


@case("output_under_proc", subprocess=True)
def _(ws, d):
    """Unwritable even for root."""
    return _out(ws, d, "/proc/statq-corpus-q.onnx")


@case("output_name_too_long")
def _(ws, d):
    return _out(ws, d, d / "out" / ("q" * 300 + ".onnx"))


@case("output_is_a_folder")
def _(ws, d):
    return _out(ws, d, d / "out", BAD_OPTION)


@case("output_is_the_input")
def _(ws, d):
    src = _base(ws, d)
    return Case([str(src), "-o", str(src)], BAD_OUTPUT, output=src)


@case("output_is_the_input_respelled")
def _(ws, d):
    src = _base(ws, d)
    (d / "in" / "sub").mkdir()
    out = d / "in" / "sub" / ".." / "m.onnx"
    return Case([str(src), "-o", str(out)], BAD_OUTPUT, output=out)


@case("output_is_a_symlink_to_the_input")
def _(ws, d):
    src = _base(ws, d)
    link = d / "in" / "link.onnx"
    os.symlink(src, link)
    return Case([str(src), "-o", str(link)], BAD_OUTPUT, output=link)


@case("output_is_the_external_data")
def _(ws, d):
    src = _external(ws, d / "in")
    return Case([str(src), "-o", str(d / "in" / "m.data")], BAD_OUTPUT, output=d / "in" / "m.data")


@case("output_is_the_calibration_file")
def _(ws, d):
    calib = _npz(d / "in" / "c.npz", x=np.zeros((4, IN_DIM), np.float32))
    return Case([str(_base(ws, d)), "-o", str(calib), "--calib", str(calib)], BAD_OUTPUT, output=calib)


@case("output_is_the_config_file")
def _(ws, d):
    cfg = _write(d / "in" / "c.json", json.dumps({"bits": 3}))
    return Case([str(_base(ws, d)), "-o", str(cfg), "--config", str(cfg)], BAD_OUTPUT, output=cfg)


@case("report_folder_missing")
def _(ws, d):
    return Case(_run(_base(ws, d), d, "--report", str(d / "out" / "no" / "r.json")), BAD_OUTPUT)


@case("report_is_the_input")
def _(ws, d):
    src = _base(ws, d)
    return Case(_run(src, d, "--report", str(src)), BAD_OUTPUT)


@case("report_is_the_output")
def _(ws, d):
    return Case(_run(_base(ws, d), d, "--report", str(d / "out" / "q.onnx")), BAD_OUTPUT)


# ---------------------------------------------------------------------------------------------------------------------
# Bad option values and config files: exit 2


BAD_OPTIONS = {
    "bits_0": ["--bits", "0"],
    "bits_9": ["--bits", "9"],
    "bits_not_a_number": ["--bits", "three"],
    "method_unknown": ["--method", "magic"],
    "granularity_unknown": ["--granularity", "row"],
    "min_size_0": ["--min-size", "0"],
    "avg_bits_too_low": ["--avg-bits", "1"],
    "avg_bits_nan": ["--avg-bits", "nan"],
    "calib_samples_0": ["--calib-samples", "0"],
    "calib_mode_unknown": ["--calib-mode", "magic"],
    "calib_compensation_2": ["--calib-compensation", "2"],
    "unknown_option": ["--turbo"],
    "target_sqnr_negative": ["--target-sqnr", "-5"],
    "size_ratio_0": ["--size-ratio", "0"],
    "format_unknown": ["--format", "tflite"],
    "jobs_0": ["--jobs", "0"],
    "jobs_not_a_number": ["--jobs", "all"],
}


# Edge values that are valid: each must quantize (one bit with the default allocation raised KeyError before)
EDGE_OPTIONS = {
    "bits_1": ["--bits", "1"],
    "bits_1_avg_bits_3": ["--bits", "1", "--avg-bits", "3"],
    "bits_1_target_sqnr": ["--bits", "1", "--target-sqnr", "10"],
    "bits_8_channel": ["--bits", "8", "--granularity", "channel"],
    "bits_auto_avg_bits_2": ["--bits", "auto", "--avg-bits", "2"],
}


def _edge_option(argv: list[str]) -> Builder:
    return lambda ws, d: Case(_run(_base(ws, d), d, *argv), OK)


for _name, _argv in EDGE_OPTIONS.items():
    case(f"option_{_name}")(_edge_option(_argv))


def _bad_option(argv: list[str]) -> Builder:
    return lambda ws, d: Case(_run(_base(ws, d), d, *argv), BAD_OPTION)


for _name, _argv in BAD_OPTIONS.items():
    case(f"option_{_name}", subprocess=_name == "bits_not_a_number")(_bad_option(_argv))


@case("option_output_missing")
def _(ws, d):
    return Case([str(_base(ws, d))], BAD_OPTION)


@case("option_no_arguments")
def _(ws, d):
    return Case([], BAD_OPTION)


def _config(ws: Workspace, d: Path, name: str, text: str | bytes, expect: int = BAD_OPTION, **kw) -> Case:
    return Case(_run(_base(ws, d), d, "--config", str(_write(d / "in" / name, text))), expect, **kw)


CONFIGS = {
    "unknown_key": ("c.toml", "bits = 4\nbitz = 3\n"),
    "unknown_key_json": ("c.json", json.dumps({"bits": 4, "turbo": True})),
    "unknown_nested_key": ("c.toml", '[op_types.MatMul]\nbits = 4\nspeed = "max"\n'),
    "nested_not_a_table": ("c.toml", "[op_types]\nMatMul = 4\n"),
    "nodes_not_a_table": ("c.toml", "nodes = 5\n"),  # was "bad config: 'int' object is not iterable"
    "op_types_a_list": ("c.json", json.dumps({"op_types": [1]})),
    "not_a_mapping": ("c.json", "[1, 2, 3]"),
    "bad_toml": ("c.toml", "bits = = 3"),
    "bad_json": ("c.json", "{bits: 3"),
    "bits_string": ("c.json", json.dumps({"bits": "4"})),
    "bits_bool": ("c.json", json.dumps({"bits": True})),
    "bits_infinity": ("c.json", '{"bits": Infinity}'),
    "avg_bits_nan": ("c.json", '{"avg_bits": NaN}'),
    "exclude_not_a_list": ("c.json", json.dumps({"exclude": 5})),
    "method_unknown": ("c.toml", 'method = "magic"\n'),
    "jobs_0": ("c.toml", "jobs = 0\n"),
    "jobs_float": ("c.json", json.dumps({"jobs": 2.5})),
    "binary_garbage": ("c.toml", bytes(range(256))),
    "deeply_nested": ("c.json", "[" * 100_000 + "]" * 100_000),
}


def _bad_config(name: str, text: str | bytes) -> Builder:
    return lambda ws, d: _config(ws, d, name, text)


for _name, (_file, _text) in CONFIGS.items():
    case(f"config_{_name}", subprocess=_name == "unknown_key")(_bad_config(_file, _text))


@case("config_missing_file")
def _(ws, d):
    return Case(_run(_base(ws, d), d, "--config", str(d / "in" / "none.toml")), BAD_OPTION)


@case("config_ok_with_overrides")
def _(ws, d):
    text = 'bits = 3\nexclude = ["fc2"]\n[nodes.fc1]\nbits = 5\n'
    return _config(ws, d, "c.toml", text, OK, check=loads)
