"""Carry the float and the quantized stream through the graph, segment by segment, with onnxruntime.

The main graph's nodes are cut at every calibrated layer; each stretch between two layers becomes a small model run
once per calibration batch, so each stream costs about one forward pass in total, not one per layer. Tensors are
dropped after their last consumer, so memory holds the live activations of one frontier for every batch (the bound
documented in docs/calibration.md). This module never edits the quantized model: it only runs copies of the float
graph with some initializers replaced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import CalibrationError, first_line
from ..plan import bias_input_delta, bias_values
from .runtime import cpu_session, raise_if_unrunnable, release_arena

__all__ = ["StreamExecutor", "model_like", "subgraph_inputs"]

# A weight of at least this many elements comes to a segment as an input (see StreamExecutor._fed): on MiniLM,
# serialising its weights into 40 segments and parsing them again took 0.4 s of a 1.9 s calibration run.
FEED_MIN_ELEMENTS = 1024
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}

T = TypeVar("T")
R = TypeVar("R")

# Every session is single-threaded; the runs of a segment (every calibration batch, on each stream) go to a pool of
# ``jobs`` Python threads instead. onnxruntime releases the GIL while it runs, the batches are independent, and a
# single-threaded kernel gives the same bits whichever thread runs it, so the streams cannot depend on the number of
# threads or on the machine's load. A session with onnxruntime's own pool also costs ~4-8 ms to create, against
# ~0.2 ms, and most segments run in well under a millisecond. The sessions share one arena (:mod:`.runtime`).


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


def _input_info(name: str, a: np.ndarray, shape: list[int | None]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), shape)


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _bias_name(node: onnx.NodeProto) -> str:
    """A Conv's or Gemm's bias input, '' if it has none."""
    return node.input[2] if len(node.input) > 2 and node.input[2] else ""


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
        jobs: int = 1,
    ) -> None:
        """``quant_stream=False`` (independent calibration) walks the float stream only; :meth:`finish` then runs
        the quantized model once, whole, for the model-level comparison.

        ``float_until``: no layer from this node on reads the float stream (a refit with compensation 0 needs only
        the quantized inputs), so the float stream waits there, holding its activations, and :meth:`finish` runs
        it to the outputs in one go. None: the float stream runs to the end with the quantized one.

        ``jobs``: threads running the batches of a segment at once (see the module's note); :meth:`close`, or a
        ``with`` block, stops them."""
        self.model = model
        self.feeds = feeds
        self.quant_stream = quant_stream
        self.float_until = None if float_until is None or not quant_stream else float_until
        self.nodes = list(model.graph.node)
        self.weights = {t.name: t for t in model.graph.initializer}
        self.outputs = [o.name for o in model.graph.output]
        self.input_names = {i.name for i in model.graph.input}
        self.last_use = self._last_uses()
        self.float_env = [dict(f) for f in feeds]
        self.quant_env = [dict(f) for f in feeds]
        self.overrides: dict[str, np.ndarray] = {}
        self._arrays: dict[str, np.ndarray] = {}  # float weights fed to segments, until their last reader has run
        self.node_bias: dict[int, np.ndarray] = {}
        self.pos = 0
        self.float_pos = 0  # where the float stream is: behind pos once no layer reads it (see advance)
        self.sessions = 0
        self._pool = ThreadPoolExecutor(jobs, thread_name_prefix="statq-calib") if jobs > 1 else None

    def __enter__(self) -> StreamExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the batch threads and give the shared arena's free memory back (the pass goes on to save)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        release_arena()

    def _map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """``[fn(x) for x in items]`` on the pool, in input order (every item runs; the first error is raised)."""
        if self._pool is None or len(items) <= 1:
            return [fn(x) for x in items]
        return list(self._pool.map(fn, items))

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

    def add_bias(self, index: int, delta: np.ndarray) -> bool:
        """Add ``delta`` to the output of node ``index`` in the quantized stream through its bias input, as the
        graph will (:func:`~onnx_statq.plan.bias_input_delta`); False, and nothing added, where that input cannot
        take it (a computed bias, a Gemm's C that is not one value per channel, beta 0)."""
        if index < self.pos:
            raise ValueError("bias of a node that has already run")
        node = self.nodes[index]
        old = _bias_name(node)
        if old and (old not in self.weights or old in self.input_names):  # computed, or an input that may override it
            return False
        shape = tuple(self.weights[old].dims) if old else None
        moved = bias_input_delta(node.op_type, _attrs(node), shape, delta)
        if moved is not None:
            self.node_bias[index] = moved  # what the bias input gains, in its shape
        return moved is not None

    def _biased(self, index: int, node: onnx.NodeProto) -> tuple[onnx.NodeProto, onnx.TensorProto]:
        old = _bias_name(node)
        base = numpy_helper.to_array(self.weights[old]) if old else None
        value = bias_values(base, self.node_bias[index], self._weight_dtype(node.input[1]))
        name = f"statq_calib_bias_{index}"
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        if old:
            copy.input[2] = name
        else:
            copy.input.append(name)
        return copy, numpy_helper.from_array(value, name)

    def _weight_dtype(self, name: str) -> np.dtype[Any]:
        """The type of a layer's weight, which a bias it is given takes (the graph gives it the same)."""
        if name in self.overrides:
            return self.overrides[name].dtype
        if name in self.weights:
            return helper.tensor_dtype_to_np_dtype(self.weights[name].data_type)
        return np.dtype(np.float32)

    def advance(self, stop: int, report_only: bool = False) -> None:
        """Run both streams through nodes ``[pos, stop)``; ``report_only`` when no layer will read what they
        compute (see :meth:`finish`). Past its last reader the float stream waits where it is (:meth:`finish`)."""
        if stop <= self.pos:
            return
        live = self.float_live(stop)
        streams = [(self.float_env, False)] if live else []
        if self.quant_stream:
            streams.append((self.quant_env, True))
        self._run(self.nodes[self.pos : stop], streams, stop, full_opt=report_only)
        self.pos = stop
        if live:
            self.float_pos = stop

    def float_live(self, stop: int) -> bool:
        """Whether the float stream runs the segment ending at ``stop`` (some layer at or after it reads it)."""
        return self.float_until is None or stop <= self.float_until

    def finish(self) -> None:
        """Run both streams to the graph outputs, after the last layer's refit.

        What runs here feeds only the model-output SQNR of the report, never a refit, so it gets onnxruntime's full
        graph optimisation (as users run the model): its last bits may differ from the basic level's, which changes
        that figure in the last digits but not the calibrated weights. In independent mode this is a whole forward
        pass of the quantized model, about a third faster than at the basic level. A float stream that stopped
        after its last reader catches up from there in one run (on MiniLM, whose float stream never runs, a whole
        pass of the float model; on PP-OCRv6 recognition the part after its last convolution: 1.3 s -> 0.2 s)."""
        if self.quant_stream:
            self.advance(len(self.nodes), report_only=True)
            if self.float_pos < len(self.nodes):
                start, self.pos = self.pos, self.float_pos
                self._run(self.nodes[self.float_pos :], [(self.float_env, False)], len(self.nodes), full_opt=True)
                self.pos, self.float_pos = start, len(self.nodes)
            return
        self._whole(self.quant_env, quant=True)
        self.advance(len(self.nodes), report_only=True)

    def _whole(self, envs: list[dict[str, np.ndarray]], quant: bool) -> None:
        """Run every node on ``envs`` from the feeds, at full graph optimisation: what it computes feeds only the
        report's model-output SQNR, never a weight."""
        start, self.pos = self.pos, 0
        self._run(self.nodes, [(envs, quant)], len(self.nodes), full_opt=True)
        self.pos = start

    def _weight(self, name: str, quant: bool) -> np.ndarray:
        """A weight's value on a stream, as a feed: the quantized stream's override, else the float array (kept
        while a later segment still reads it)."""
        if quant and name in self.overrides:
            return self.overrides[name]
        if name not in self._arrays:
            self._arrays[name] = numpy_helper.to_array(self.weights[name])
        return self._arrays[name]

    def _fed(self, name: str) -> bool:
        """Whether a segment takes this weight as an input instead of carrying it: large float tensors, which a
        segment would otherwise serialise and onnxruntime parse and copy again for every session. Small ones (shapes,
        axes, normalisation parameters) stay initializers, so that constant folding still sees them."""
        t = self.weights.get(name)
        if t is None or t.data_type not in _FLOAT_TYPES:
            return False
        return int(np.prod(t.dims, dtype=np.int64)) >= FEED_MIN_ELEMENTS

    def _segment(
        self, nodes: list[onnx.NodeProto], env: dict[str, np.ndarray], quant: bool, stop: int
    ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
        """The segment's model, and the large weights it takes as inputs (:meth:`_fed`) with their values."""
        produced = {o for n in nodes for o in n.output if o}
        reads = set().union(*(_reads(n) for n in nodes)) - produced
        inits, inputs, weights = [], [], {}
        for name in sorted(reads):
            if name in env:
                a = env[name]
                inputs.append(_input_info(name, a, [None] * a.ndim))
            elif self._fed(name):
                a = weights[name] = self._weight(name, quant)
                inputs.append(_input_info(name, a, list(a.shape)))
            elif name in self.weights:
                if quant and name in self.overrides:
                    inits.append(numpy_helper.from_array(self.overrides[name], name))
                else:
                    inits.append(self.weights[name])
        body = []
        for index, n in enumerate(nodes, start=self.pos):
            out = n.output[0] if n.output else ""
            if quant and n.op_type == "Constant" and out in self.overrides:  # a quantized weight: fed
                a = weights[out] = self.overrides[out]
                inputs.append(_input_info(out, a, list(a.shape)))
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
        return model_like(self.model, graph), weights

    def _run(
        self,
        nodes: list[onnx.NodeProto],
        streams: list[tuple[list[dict[str, np.ndarray]], bool]],
        stop: int,
        full_opt: bool,
    ) -> None:
        """Run ``nodes`` on every feed of every stream given as (environments, quantized); all the runs go to the
        pool at once, and their outputs enter the environments in order."""
        runs = []
        for envs, quant in streams:
            model, weights = self._segment(nodes, envs[0], quant, stop)
            keep = [o.name for o in model.graph.output]
            if not keep:
                continue
            try:
                sess = cpu_session(model.SerializeToString(), basic=not full_opt, threads=1, shared=True)
            except Exception as exc:
                if not self._model_loads():  # the model itself, not a segment of ours
                    raise_if_unrunnable(exc, nodes[0].name or nodes[0].op_type)
                raise
            self.sessions += 1
            names = [i.name for i in sess.get_inputs()]
            runs += [(sess, keep, env, {k: env[k] if k in env else weights[k] for k in names}) for env in envs]
        try:
            outputs = self._map(lambda r: r[0].run(r[1], r[3]), runs)
        except Exception as exc:  # the segments run the model's own nodes: the data is what they cannot take
            at = nodes[0].name or nodes[0].op_type
            raise CalibrationError(
                f"onnxruntime cannot run the model on the calibration data (from node {at}): {first_line(exc, 200)}"
            ) from None
        for (_, keep, env, _), values in zip(runs, outputs, strict=True):
            env.update(zip(keep, values, strict=True))
            for name in [k for k in env if self.last_use.get(k, -1) < stop]:
                del env[name]
        for name in [k for k in self._arrays if self.last_use.get(k, -1) < stop]:
            del self._arrays[name]  # no later segment reads this weight

    def _model_loads(self) -> bool:
        """Whether onnxruntime takes the float model the streams run: a segment it refuses is then a bug of ours
        (an internal error), not a model it cannot run (exit 7)."""
        try:
            cpu_session(self.model.SerializeToString(), threads=1)
        except Exception:  # onnxruntime's own error types, whatever it refuses
            return False
        return True

    def inputs(self, name: str, quant: bool) -> list[np.ndarray]:
        return [env[name] for env in (self.quant_env if quant else self.float_env)]

    def graph_outputs(self) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
        """Each stream's graph outputs per feed; an output that is an initializer (a weight the model also
        returns) never enters the streams' tensors, so it is the stream's value of that weight."""

        def pick(envs: list[dict[str, np.ndarray]], quant: bool) -> list[dict[str, np.ndarray]]:
            stored = {k: self._weight(k, quant) for k in self.outputs if k in self.weights}
            return [{k: e[k] for k in self.outputs if k in e} | stored for e in envs]

        return pick(self.float_env, False), pick(self.quant_env, True)
