"""Carry the float and the quantized stream through the graph, segment by segment, with onnxruntime.

The main graph's nodes are cut at every calibrated layer; each stretch between two layers becomes a small model run
once per calibration batch, so each stream costs about one forward pass in total, not one per layer. Tensors are
dropped after their last consumer, so memory holds the live activations of one frontier for every batch (the bound
documented in docs/calibration.md). This module never edits the quantized model: it only runs copies of the float
graph with some initializers replaced.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

__all__ = ["StreamExecutor", "cpu_session", "model_like", "subgraph_inputs"]

logger = logging.getLogger(__name__)

# A session with onnxruntime's own intra-op thread pool takes ~4-8 ms to create (it starts the threads), a
# single-threaded one ~0.2 ms, and most segments run in well under a millisecond: thread start-up was nearly all of
# the calibration's onnxruntime time on small models (the demo CNN: 8 sessions, 70 ms, against 0.7 ms for a float
# pass). So every segment starts on one thread and moves to a threaded session only when its remaining runs are long
# enough to repay the start-up; the quantized stream then opens the same segment threaded or not as the float stream
# measured, so the slower single-threaded first run is paid once per segment. Thread counts do not change the
# results (MLAS splits work by output rows and columns, not along a reduction): the streams were compared bit for bit
# on six task models, and each segment checks it on its first feed before going threaded (_same_threaded).
THREADED_AFTER_S = 0.02


def _identical(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit for bit (NaNs included), for any dtype onnxruntime returns (strings come as object arrays)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return bool(np.array_equal(a, b)) if a.dtype == object else a.tobytes() == b.tobytes()


def subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Outer-scope names a node's If/Loop/Scan bodies read: they must be fed to any segment holding the node."""
    names: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            local = {i.name for i in g.input} | {t.name for t in g.initializer}
            for n in g.node:
                local |= set(n.output)
            for n in g.node:
                names |= {i for i in n.input if i and i not in local}
                names |= subgraph_inputs(n) - local
    return names


def model_like(model: onnx.ModelProto, graph: onnx.GraphProto) -> onnx.ModelProto:
    """``graph`` as a model with ``model``'s opsets, IR version and functions: what every copy calibration runs
    (segments, inlined branches, conditions) needs to load as the original does."""
    m = helper.make_model(graph, opset_imports=list(model.opset_import))
    m.ir_version = model.ir_version
    m.functions.extend(model.functions)
    return m


def cpu_session(model: onnx.ModelProto | bytes, basic: bool = False, threads: int = 0) -> ort.InferenceSession:
    """A quiet CPU session; ``basic`` keeps graph optimisation to the basic level (segments run once, so heavier
    optimisation would cost more than it saves); ``threads`` 0 is onnxruntime's default pool (see
    ``THREADED_AFTER_S`` for what starting it costs). ``model`` may come serialised, to open it twice."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    if basic:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def _reads(node: onnx.NodeProto) -> set[str]:
    return {i for i in node.input if i} | subgraph_inputs(node)


class StreamExecutor:
    """Runs ``nodes[a:b]`` of the main graph on both streams; callers walk forward with :meth:`advance`."""

    def __init__(
        self,
        model: onnx.ModelProto,
        feeds: list[dict[str, np.ndarray]],
        quant_stream: bool = True,
        float_until: int | None = None,
    ) -> None:
        """``quant_stream=False`` (independent calibration) walks the float stream only; :meth:`finish` then runs
        the quantized model once, whole, for the model-level comparison.

        ``float_until``: no layer from this node on reads the float stream (a refit with compensation 0 needs only
        the quantized inputs), so the float stream stops there and :meth:`finish` takes the float model's outputs
        from one whole run instead. None: the float stream runs to the end."""
        self.model = model
        self.feeds = feeds
        self.quant_stream = quant_stream
        self.float_until = None if float_until is None or not quant_stream else float_until
        self.nodes = list(model.graph.node)
        self.weights = {t.name: t for t in model.graph.initializer}
        self.outputs = [o.name for o in model.graph.output]
        self.last_use = self._last_uses()
        self.float_env = [dict(f) for f in feeds]
        self.quant_env = [dict(f) for f in feeds]
        self.overrides: dict[str, np.ndarray] = {}
        self.node_bias: dict[int, np.ndarray] = {}
        self.pos = 0
        self.sessions = 0

    def _last_uses(self) -> dict[str, int]:
        last: dict[str, int] = {}
        for i, n in enumerate(self.nodes):
            for name in _reads(n):
                last[name] = i
        for name in self.outputs:
            last[name] = len(self.nodes)
        return last

    def set_quantized(self, name: str, value: np.ndarray) -> None:
        """Replace a weight in the quantized stream from now on.

        A weight from a Constant node that has already run sits in the stream's tensors, so it is replaced there too:
        otherwise every later segment would read the float value (the quantized stream of a model with its weights in
        Constant nodes would stay float, and sequential calibration would fit against the wrong inputs).
        """
        self.overrides[name] = value
        for env in self.quant_env:
            if name in env:
                env[name] = value

    def can_add_bias(self, index: int) -> bool:
        node = self.nodes[index]
        return len(node.input) < 3 or not node.input[2] or node.input[2] in self.weights

    def add_bias(self, index: int, delta: np.ndarray) -> None:
        """Add ``delta`` to the bias of node ``index`` in the quantized stream (the graph gets the same bias)."""
        if index < self.pos:
            raise ValueError("bias of a node that has already run")
        self.node_bias[index] = delta

    def _biased(self, index: int, node: onnx.NodeProto) -> tuple[onnx.NodeProto, onnx.TensorProto]:
        delta = self.node_bias[index]
        old = node.input[2] if len(node.input) > 2 and node.input[2] else ""
        base = numpy_helper.to_array(self.weights[old]) if old else np.zeros(delta.shape, np.float32)
        name = f"statq_calib_bias_{index}"
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        if old:
            copy.input[2] = name
        else:
            copy.input.append(name)
        value = (base.astype(np.float64) + delta.reshape(base.shape)).astype(base.dtype)
        return copy, numpy_helper.from_array(value, name)

    def advance(self, stop: int, report_only: bool = False) -> None:
        """Run both streams through nodes ``[pos, stop)``; ``report_only`` when no layer will read what they
        compute (see :meth:`finish`)."""
        if stop <= self.pos:
            return
        nodes = self.nodes[self.pos : stop]
        threaded = None
        if self.float_live(stop):
            threaded = self._run(nodes, self.float_env, False, stop, full_opt=report_only)
        elif self.float_env:
            self.float_env = []  # nothing reads the float stream any more: free its activations
        if self.quant_stream:  # the same nodes on the same shapes: the float stream's measurement decides
            self._run(nodes, self.quant_env, True, stop, full_opt=report_only, threaded=threaded)
        self.pos = stop

    def float_live(self, stop: int) -> bool:
        """Whether the float stream runs the segment ending at ``stop`` (some layer at or after it reads it)."""
        return self.float_until is None or stop <= self.float_until

    def finish(self) -> None:
        """Run both streams to the graph outputs, after the last layer's refit.

        What runs here feeds only the model-output SQNR of the report, never a refit, so it gets onnxruntime's full
        graph optimisation (as users run the model): its last bits may differ from the basic level's, which changes
        that figure in the last digits but not the calibrated weights. In independent mode this is a whole forward
        pass of the quantized model, about a third faster than at the basic level."""
        if self.quant_stream:
            live = self.float_live(len(self.nodes))
            self.advance(len(self.nodes), report_only=True)
            if not live:  # the float stream stopped early: the float model's outputs from one whole run
                self._float_outputs()
            return
        self._whole(self.quant_env, quant=True)
        self.advance(len(self.nodes), report_only=True)

    def _float_outputs(self) -> None:
        """The float model's outputs on every feed, from one whole run of the model as it is (no segment copy of its
        graph to build: on MiniLM 0.6 s instead of 0.76 s), on a thread pool at full graph optimisation."""
        sess = cpu_session(self.model)
        self.sessions += 1
        names = {i.name for i in sess.get_inputs()}
        self.float_env = []
        for feed in self.feeds:
            values = sess.run(self.outputs, {k: v for k, v in feed.items() if k in names})
            self.float_env.append(dict(zip(self.outputs, values, strict=True)))

    def _whole(self, envs: list[dict[str, np.ndarray]], quant: bool) -> None:
        """Run every node on ``envs`` from the feeds, at full graph optimisation on onnxruntime's thread pool: what
        it computes feeds only the report's model-output SQNR, never a weight, so the segments' single-thread first
        run and bit-for-bit check of the pool (a second session and run) are not needed here."""
        start, self.pos = self.pos, 0
        self._run(self.nodes, envs, quant, len(self.nodes), full_opt=True, threaded=True)
        self.pos = start

    def _segment(
        self, nodes: list[onnx.NodeProto], env: dict[str, np.ndarray], quant: bool, stop: int
    ) -> onnx.ModelProto:
        produced = {o for n in nodes for o in n.output if o}
        reads = set().union(*(_reads(n) for n in nodes)) - produced
        inits, inputs = [], []
        for name in sorted(reads):
            if name in env:
                a = env[name]
                inputs.append(
                    helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), [None] * a.ndim)
                )
            elif name in self.weights:
                if quant and name in self.overrides:
                    inits.append(numpy_helper.from_array(self.overrides[name], name))
                else:
                    inits.append(self.weights[name])
        body = []
        for index, n in enumerate(nodes, start=self.pos):
            out = n.output[0] if n.output else ""
            if quant and n.op_type == "Constant" and out in self.overrides:
                inits.append(numpy_helper.from_array(self.overrides[out], out))
            elif quant and index in self.node_bias:
                node, bias = self._biased(index, n)
                body.append(node)
                inits.append(bias)
            else:
                body.append(n)
        keep = [o for o in sorted(produced) if self.last_use.get(o, -1) >= stop]
        graph = helper.make_graph(
            body, "segment", inputs, [helper.make_empty_tensor_value_info(o) for o in keep], inits
        )
        return model_like(self.model, graph)

    def _run(
        self,
        nodes: list[onnx.NodeProto],
        envs: list[dict[str, np.ndarray]],
        quant: bool,
        stop: int,
        full_opt: bool,
        threaded: bool | None = None,
    ) -> bool:
        """Run ``nodes`` on every feed of one stream; ``threaded`` None measures the first feed on one thread to
        decide (``THREADED_AFTER_S``). Returns whether the thread pool was used."""
        model = self._segment(nodes, envs[0], quant, stop)
        keep = [o.name for o in model.graph.output]
        if not keep:
            return bool(threaded)
        data = model.SerializeToString()
        basic = not full_opt
        sess = cpu_session(data, basic=basic, threads=0 if threaded else 1)
        self.sessions += 1
        names = [i.name for i in sess.get_inputs()]
        for i, env in enumerate(envs):
            feed = {k: env[k] for k in names}
            start = time.thread_time()  # a single-threaded session runs in this thread; a busy machine adds nothing
            values = sess.run(keep, feed)
            if threaded is None and i == 0 and (time.thread_time() - start) * (len(envs) - 1) > THREADED_AFTER_S:
                pooled = self._same_threaded(data, basic, keep, feed, values)  # a long segment: a pool may pay
                threaded = pooled is not None
                sess = pooled or sess
            env.update(zip(keep, values, strict=True))
            for name in [k for k in env if self.last_use.get(k, -1) < stop]:
                del env[name]
        return bool(threaded)

    def _same_threaded(
        self, data: bytes, basic: bool, keep: list[str], feed: dict[str, np.ndarray], single: list[np.ndarray]
    ) -> ort.InferenceSession | None:
        """A session on onnxruntime's thread pool, if it gives the single-threaded outputs bit for bit on ``feed``.

        Whether a segment goes threaded is decided by timing, which varies from run to run; the calibrated model
        must not. MLAS splits its work by output rows and columns, so the results were identical on six task
        models, but an op that splits a reduction across threads would not be: such a segment stays on one thread
        (one extra run of one feed, for segments long enough to be threaded)."""
        sess = cpu_session(data, basic=basic)
        self.sessions += 1
        pooled = sess.run(keep, feed)
        if all(_identical(a, b) for a, b in zip(single, pooled, strict=True)):
            return sess
        logger.debug("segment ending at %s stays single-threaded: the thread pool changes its results", keep[0])
        return None

    def inputs(self, name: str, quant: bool) -> list[np.ndarray]:
        return [env[name] for env in (self.quant_env if quant else self.float_env)]

    def graph_outputs(self) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
        pick = lambda envs: [{k: e[k] for k in self.outputs if k in e} for e in envs]  # noqa: E731
        return pick(self.float_env), pick(self.quant_env)
