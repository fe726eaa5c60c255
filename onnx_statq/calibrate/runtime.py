"""The onnxruntime sessions calibration opens, and the CPU memory arena they share.

The executor's sessions share one CPU arena, registered with onnxruntime's environment (``_shared_arena``). Each
session otherwise starts an arena of its own and gives it back when it closes, so every segment faulted its working
memory in afresh: on PP-OCRv6 det, 19 GB of page faults and 25 s of system time for 21 s of runs, against 4.8 GB and
13 s with the shared arena (same output file). :func:`release_arena` gives its free regions back when calibration
ends.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from ..errors import UnsupportedModelError, first_line

__all__ = ["cpu_session", "raise_if_unrunnable", "release_arena"]

logger = logging.getLogger(__name__)

_arena_lock = threading.Lock()
_arena_ready = False


def _shared_arena() -> None:
    """Register one CPU arena for the whole process, once (sessions opt in to it, see :func:`cpu_session`)."""
    global _arena_ready
    with _arena_lock:
        if _arena_ready:
            return
        mem = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        try:  # regions of the requested size (strategy 1), so that release_arena can return each one to the system
            ort.create_and_register_allocator(mem, ort.OrtArenaCfg(0, 1, -1, -1))
        except Exception as exc:  # the embedding application registered its own: the sessions share that one
            logger.debug("no shared CPU arena registered (%s)", exc)
        _arena_ready = True


def release_arena() -> None:
    """Return the shared arena's free regions to the system: one tiny run with onnxruntime's arena shrinkage. The
    arena grows to the largest runs' working memory (3 GB on PP-OCRv6 det), which a process that goes on after
    quantizing must not keep."""
    if not _arena_ready:
        return
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "release", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    opts = ort.RunOptions()
    opts.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    cpu_session(model, basic=True, threads=1, shared=True).run(None, {"x": np.zeros(1, np.float32)}, opts)


def cpu_session(
    model: onnx.ModelProto | bytes, basic: bool = False, threads: int = 0, shared: bool = False
) -> ort.InferenceSession:
    """A quiet CPU session; ``basic`` keeps graph optimisation to the basic level (segments run once, so heavier
    optimisation would cost more than it saves); ``threads`` 0 is onnxruntime's default pool, whose results may
    depend on the thread count (the executor's sessions take 1: see :mod:`.executor`); ``shared`` takes memory from
    the process's shared arena (see the module's note). ``model`` may come serialised."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # a failing run raises, and the executor says it in one line: no log lines of its own
    opts.intra_op_num_threads = threads
    if shared:
        _shared_arena()
        opts.add_session_config_entry("session.use_env_allocators", "1")
    if basic:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def raise_if_unrunnable(exc: Exception, at: str) -> None:
    """A session onnxruntime refused to create is a model it cannot run (an op without a CPU kernel, a double
    Conv): an unsupported model for calibration, exit 7, as a one-line error. Anything else is left to the caller
    (a bug of ours stays an internal error)."""
    if type(exc).__module__.startswith("onnxruntime"):
        raise UnsupportedModelError(
            f"onnxruntime cannot run the model (from node {at}), so it cannot be calibrated; quantize it without "
            f"calibration data: {first_line(exc, 200)}"
        ) from None
