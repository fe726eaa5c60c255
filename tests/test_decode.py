"""The emitted decode graph on its own: bit-exact at every opset, bit width and layout, folded or not, and small.

The last point is what the decode's design is for: onnxruntime materialises every intermediate of the constant fold
at once when it creates a session, so the bytes of intermediates per weight element are the session-creation peak.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from onnx_statq.codebook import EncodedTensor, encode_tensor
from onnx_statq.graph.encode import emit_decode
from onnx_statq.graph.tables import ByteTables

OPSETS = [7, 9, 10, 11, 13, 14, 17]
# ops with an onnxruntime CPU kernel for the types the decode uses, by the opset they need
ALLOWED = {"Cast": 7, "Div": 7, "Mul": 7, "Sub": 7, "Add": 7, "Reshape": 7, "Concat": 7, "Gather": 7, "Mod": 10}
ALLOWED |= {"Range": 11, "GatherElements": 11}


FLOAT32 = np.dtype(np.float32)


def decode_model(enc: EncodedTensor, opset: int, dtype: np.dtype = FLOAT32) -> onnx.ModelProto:
    """A graph whose only output is the decoded weight."""
    counter = itertools.count()
    target = gs.Variable("w", dtype=dtype, shape=enc.shape)
    nodes = emit_decode(enc, target, dtype, opset, lambda name: f"{name}_{next(counter)}")
    graph = gs.Graph(nodes=nodes, inputs=[], outputs=[target], opset=opset)
    model = gs.export_onnx(graph)
    model.ir_version = 7
    return model


def run(model: onnx.ModelProto, fold: bool) -> np.ndarray:
    return run_all(model, fold)[0]


def run_all(model: onnx.ModelProto, fold: bool) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not fold:  # what an ORT-format model does: the decode runs in the session
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {})


CASES = [  # shape, channel axis; 7 * 13 leaves a tail of indices stored whole
    ((24, 16), 0),
    ((16, 24), 1),
    ((7, 13), 1),
    ((8, 3, 3, 3), 0),
    ((3, 8, 2, 2), 1),
]


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_decode_is_bit_exact_at_every_opset(opset, bits, granularity, rng):
    for shape, axis in CASES:
        scale = np.exp(2 * rng.standard_normal(shape[axis])).reshape(
            [-1 if i == axis else 1 for i in range(len(shape))]
        )
        w = (rng.standard_normal(shape) * scale).astype(np.float32)
        enc = encode_tensor(w, axis, bits, "sigma", granularity)
        model = decode_model(enc, opset)
        onnx.checker.check_model(model, full_check=True)
        for node in model.graph.node:
            assert ALLOWED.get(node.op_type, 99) <= opset, (node.op_type, opset)
        for fold in (True, False):
            out = run(model, fold)
            assert out.dtype == np.float32 and out.shape == shape
            assert np.array_equal(out.view(np.uint32), enc.decoded().view(np.uint32)), (shape, axis, fold)


def test_float16_weights_decode_to_float16(rng):
    w = rng.standard_normal((16, 32)).astype(np.float16)
    for granularity in ("tensor", "channel"):
        enc = encode_tensor(w, 1, 4, "sigma", granularity)
        out = run(decode_model(enc, 17, np.dtype(np.float16)), fold=True)
        assert out.dtype == np.float16 and np.array_equal(out, enc.decoded().astype(np.float16))


def test_decode_is_deterministic(rng):
    w = rng.standard_normal((32, 48)).astype(np.float32)
    enc = encode_tensor(w, 1, 3, "sigma", "channel")
    assert decode_model(enc, 17).SerializeToString() == decode_model(enc, 17).SerializeToString()


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("bits", [3, 4, 5, 7])
def test_weights_of_a_graph_share_the_byte_tables(opset, bits, rng):
    """Two weights decoded with one graph's tables: the tables are built once, the second weight's decode has none
    of their arithmetic, and both weights still decode bit for bit (folded or run, every opset's fallback)."""
    counter = itertools.count()
    fresh = lambda name: f"{name}_{next(counter)}"  # noqa: E731
    tables = ByteTables(fresh, opset)
    encs = [
        encode_tensor(rng.standard_normal(shape).astype(np.float32), 1, bits, "sigma", "tensor")
        for shape in [(24, 16), (16, 40)]
    ]
    targets = [gs.Variable(f"w{i}", dtype=FLOAT32, shape=e.shape) for i, e in enumerate(encs)]
    first, second = (
        emit_decode(e, t, FLOAT32, opset, fresh, f"statq{i}", tables)
        for i, (e, t) in enumerate(zip(encs, targets, strict=True))
    )
    table_ops = {"Range", "Div", "Mod", "Mul", "Sub"}
    assert tables.nodes and not table_ops & {n.op for n in first + second}
    assert len(tables.nodes) == len(decode_model(encs[0], opset).graph.node) - len(first)  # what one weight builds
    built = {t.name for n in tables.nodes for t in n.outputs}

    def reads(nodes: list[gs.Node]) -> set[str]:
        return {t.name for n in nodes for t in n.inputs} & built

    assert reads(second) and reads(second) == reads(first)  # the same tables, built before either
    graph = gs.Graph(nodes=tables.nodes + first + second, inputs=[], outputs=targets, opset=opset)
    model = gs.export_onnx(graph)
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    for fold in (True, False):
        got = run_all(model, fold)
        for out, enc in zip(got, encs, strict=True):
            assert np.array_equal(out.view(np.uint32), enc.decoded().view(np.uint32)), fold


def intermediate_bytes(model: onnx.ModelProto) -> int:
    """Bytes of every tensor the decode computes, the output excepted: what a constant fold materialises."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    total = 0
    for vi in inferred.graph.value_info:
        t = vi.type.tensor_type
        size = int(np.prod([d.dim_value for d in t.shape.dim]))
        total += size * onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize
    return total


@pytest.mark.parametrize(
    "bits, granularity, budget",
    [
        (4, "tensor", 6.5),
        (2, "tensor", 5.5),
        (8, "tensor", 4.5),
        (3, "tensor", 12),
        (4, "channel", 8.5),
        (5, "channel", 13.5),
    ],
)
def test_decode_materialises_few_bytes_per_weight(bits, granularity, budget, rng):
    """Bytes of intermediates per weight element (the float output itself is 4).

    The Div/Mul/Sub decode it replaced took 26 (4 bits, tensor), 25 (2), 12 (8), 53.5 (3), 34 (4, channel) and 63
    (5, channel).
    """
    shape = (256, 384)  # large enough that the tables over the 256 byte values do not count
    w = (rng.standard_normal(shape) * np.exp(2 * rng.standard_normal(384))).astype(np.float32)
    enc = encode_tensor(w, 1, bits, "sigma", granularity)
    per_weight = intermediate_bytes(decode_model(enc, 17)) / w.size
    assert per_weight <= budget
