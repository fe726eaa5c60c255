"""Op type -> which inputs are weights, and which axis of each holds the output channels.

An explicit table instead of if/elif chains: adding an op is one entry, and the pass asks nothing else of the op.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

__all__ = ["HANDLERS", "WeightSlot", "weight_slots"]

AxisRule = Callable[[Mapping[str, Any], tuple[int, ...]], "int | None"]


@dataclass(frozen=True)
class WeightSlot:
    """Input ``index`` of the op is a weight when it is constant; ``axis`` gives its output-channel axis."""

    index: int
    axis: AxisRule
    role: str


def _const(axis: int | None) -> AxisRule:
    return lambda attrs, shape: axis


def _conv_transpose(attrs: Mapping[str, Any], shape: tuple[int, ...]) -> int | None:
    # Weight is [C_in, C_out / group, ...]; with groups, axis 1 mixes groups, so fall back to the input channels.
    return 1 if int(attrs.get("group", 1)) == 1 else 0


def _gemm_b(attrs: Mapping[str, Any], shape: tuple[int, ...]) -> int | None:
    return 0 if int(attrs.get("transB", 0)) else 1


def _gemm_a(attrs: Mapping[str, Any], shape: tuple[int, ...]) -> int | None:
    return 1 if int(attrs.get("transA", 0)) else 0


def _matmul_b(attrs: Mapping[str, Any], shape: tuple[int, ...]) -> int | None:
    return len(shape) - 1 if len(shape) >= 2 else None


def _matmul_a(attrs: Mapping[str, Any], shape: tuple[int, ...]) -> int | None:
    return len(shape) - 2 if len(shape) >= 2 else None


def _gather(attrs: Mapping[str, Any], shape: tuple[int, ...]) -> int | None:
    # An embedding table [vocab, dim] gathered on axis 0: the feature columns are the channels.
    return 1 if len(shape) == 2 and int(attrs.get("axis", 0)) == 0 else None


_RECURRENT = (WeightSlot(1, _const(1), "input weights"), WeightSlot(2, _const(1), "recurrence weights"))

HANDLERS: Mapping[str, tuple[WeightSlot, ...]] = MappingProxyType(
    {
        "Conv": (WeightSlot(1, _const(0), "filters"),),
        "ConvTranspose": (WeightSlot(1, _conv_transpose, "filters"),),
        "Gemm": (WeightSlot(1, _gemm_b, "B"), WeightSlot(0, _gemm_a, "A")),
        "MatMul": (WeightSlot(1, _matmul_b, "B"), WeightSlot(0, _matmul_a, "A")),
        "Gather": (WeightSlot(0, _gather, "table"),),
        "LSTM": _RECURRENT,
        "GRU": _RECURRENT,
        "RNN": _RECURRENT,
    }
)


def weight_slots(op_type: str, domain: str = "") -> tuple[WeightSlot, ...]:
    """The weight inputs of an op; ops outside the default domain have none."""
    if domain not in ("", "ai.onnx"):
        return ()
    return HANDLERS.get(op_type, ())
