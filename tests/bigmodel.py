"""Write an LLM-shaped model of any size with external data, one tensor at a time, so the writer stays lean.

An embedding table feeds a chain of up (MatMul) and down (Gemm, transB=1, with a bias) projections. The weights go
into ``<name>.data`` with numpy's ``tofile``, in blocks, at offsets aligned to 4 KiB; the ``.onnx`` file holds only
the graph and ``TensorProto``s that point into the data file. Peak memory of the writer is one block, whatever the
model's size. Used by tests/test_large.py and benchmarks/bench_large.py.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

__all__ = ["BigModel", "Measured", "layers_for", "run_measured", "write_big_model"]

ALIGN = 4096
BLOCK = 1 << 22  # elements generated and written at a time (16 MiB of float32)


@dataclass(frozen=True)
class BigModel:
    path: Path
    data: Path
    weight_bytes: int  # bytes of float weights (every initializer)
    shapes: dict[str, tuple[int, ...]]


def layers_for(total_bytes: int, dim: int = 4096, hidden: int = 16384, vocab: int = 8192) -> int:
    """Projection layers needed for the weights to reach ``total_bytes`` (at least 2)."""
    per_layer = 4 * dim * hidden
    return max(2, math.ceil((total_bytes - 4 * vocab * dim) / per_layer))


def _write_tensor(fh, rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> tuple[int, int]:
    """Append a random float32 tensor at the next aligned offset; returns (offset, length)."""
    pos = fh.tell()
    offset = -(-pos // ALIGN) * ALIGN
    fh.write(b"\0" * (offset - pos))
    n = math.prod(shape)
    for start in range(0, n, BLOCK):
        block = rng.standard_normal(min(BLOCK, n - start), dtype=np.float32)
        block *= np.float32(scale)
        block.tofile(fh)
    return offset, 4 * n


def _external(name: str, shape: tuple[int, ...], location: str, offset: int, length: int) -> TensorProto:
    t = TensorProto()
    t.name = name
    t.data_type = TensorProto.FLOAT
    t.dims.extend(shape)
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


def write_big_model(
    folder: str | Path,
    layers: int = 8,
    dim: int = 4096,
    hidden: int = 16384,
    vocab: int = 8192,
    name: str = "big.onnx",
    seed: int = 0,
) -> BigModel:
    """``ids [N] -> Gather(table) -> (MatMul up, Relu, Gemm down + bias) * layers/2 -> y [N, dim]``.

    Default sizes: eight 256 MiB projections and a 128 MiB table, 2.28 GB of float32 weights (over protobuf's 2 GB).
    """
    if layers < 2 or layers % 2:
        raise ValueError(f"layers must be even and >= 2, got {layers}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path, data = folder / name, folder / f"{name}.data"
    rng = np.random.default_rng(seed)
    inits: list[TensorProto] = []
    shapes: dict[str, tuple[int, ...]] = {}
    nodes = [helper.make_node("Gather", ["table", "ids"], ["h0"], name="embed")]
    with open(data, "wb") as fh:

        def add(tname: str, shape: tuple[int, ...], scale: float) -> None:
            offset, length = _write_tensor(fh, rng, shape, scale)
            inits.append(_external(tname, shape, data.name, offset, length))
            shapes[tname] = shape

        add("table", (vocab, dim), 1.0)
        h = "h0"
        for i in range(0, layers, 2):
            add(f"up{i}", (dim, hidden), 1.0 / math.sqrt(dim))
            add(f"down{i}", (dim, hidden), 1.0 / math.sqrt(hidden))
            add(f"bias{i}", (dim,), 0.1)
            nodes += [
                helper.make_node("MatMul", [h, f"up{i}"], [f"u{i}"], name=f"layer{i}/up"),
                helper.make_node("Relu", [f"u{i}"], [f"r{i}"], name=f"layer{i}/relu"),
                helper.make_node(
                    "Gemm", [f"r{i}", f"down{i}", f"bias{i}"], [f"h{i + 2}"], name=f"layer{i}/down", transB=1
                ),
            ]
            h = f"h{i + 2}"
    nodes.append(helper.make_node("Identity", [h], ["y"], name="out"))
    graph = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests.bigmodel")
    model.ir_version = 8
    onnx.save(model, str(path))
    weight_bytes = sum(4 * math.prod(s) for s in shapes.values())
    return BigModel(path, data, weight_bytes, shapes)


@dataclass(frozen=True)
class Measured:
    returncode: int
    peak_rss: int  # bytes: the largest resident set the command reached
    wall_s: float
    stdout: str
    stderr: str


# A fresh interpreter whose only child is the command: its RUSAGE_CHILDREN peak is the command's alone (the
# caller's own children, or a pytest worker's, would otherwise be counted in).
_WRAPPER = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.call(sys.argv[2:])
wall = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
json.dump({"returncode": rc, "peak_rss": peak, "wall_s": wall}, open(sys.argv[1], "w"))
"""


def run_measured(argv: list[str], env: dict[str, str] | None = None, timeout: float | None = None) -> Measured:
    """Run ``argv`` and measure its peak resident set (``ru_maxrss``, which counts mapped file pages too)."""
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        res = subprocess.run(
            [sys.executable, "-c", _WRAPPER, path, *argv], capture_output=True, text=True, env=env, timeout=timeout
        )
        data = json.loads(Path(path).read_text())
    finally:
        os.unlink(path)
    return Measured(data["returncode"], data["peak_rss"], data["wall_s"], res.stdout, res.stderr)
