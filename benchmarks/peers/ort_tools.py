"""onnxruntime's own quantizers: dynamic int8, static QDQ int8 and the MatMulNBits 4-bit weight-only quantizer.

- ``quantize_dynamic``: int8 weights (``QuantType.QInt8``), every op type it supports, default options.
- ``quantize_static``: QDQ, int8 weights and activations, MinMax calibration on the same feeds as onnx-statq's
  calibrated rows (through a ``CalibrationDataReader``), after ``quant_pre_process`` (shape inference and
  optimization) as onnxruntime's documentation asks (skipped, with a note, where it fails); per-channel weights
  where the model's opset allows it (13+: per-axis DequantizeLinear), per-tensor below.
- ``MatMulNBitsQuantizer``: 4-bit blockwise weights in the ``com.microsoft.MatMulNBits`` contrib op, MatMul only
  (not Gemm, not Conv): the default config (round to nearest, asymmetric, blocks of 128), HQQ (needs torch), GPTQ
  (onnxruntime's vendored copy of Intel Neural Compressor's numpy GPTQ, calibrated; blocks of 32, see
  ``GPTQ_BLOCK``), and the default config extended to ``Gather`` (``GatherBlockQuantized``, i.e. embedding tables)
  where a model has one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import onnx

from . import Feeds, NotApplicable, Tool


class FeedReader:
    """A ``CalibrationDataReader`` over a list of feeds (index-based, so GPTQ's deepcopy of it starts over too)."""

    def __init__(self, feeds: Feeds) -> None:
        self.feeds = feeds
        self.index = 0

    def get_next(self) -> dict[str, Any] | None:
        if self.index >= len(self.feeds):
            return None
        self.index += 1
        return self.feeds[self.index - 1]

    def rewind(self) -> None:
        self.index = 0

    def __iter__(self):
        self.rewind()
        return self

    def __next__(self) -> dict[str, Any]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item

    def __len__(self) -> int:
        return len(self.feeds)


def _reader(feeds: Feeds | None):
    from onnxruntime.quantization import CalibrationDataReader

    if not feeds:
        raise ValueError("this tool needs calibration feeds")

    class Reader(FeedReader, CalibrationDataReader):
        pass

    return Reader(feeds)


def _quiet() -> None:
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)


def dynamic_int8(src: Path, dst: Path, feeds: Feeds | None) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _quiet()
    quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
    return {}


def static_qdq_int8(src: Path, dst: Path, feeds: Feeds | None) -> dict[str, Any]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    _quiet()
    notes: dict[str, Any] = {}
    scratch = dst.parent / "_scratch"
    scratch.mkdir(exist_ok=True)
    pre = scratch / "pre.onnx"
    try:
        quant_pre_process(str(src), str(pre))
        model_in = pre
    except Exception as exc:  # pre-processing is advice, not a requirement: quantize the raw model then
        notes["pre_process"] = f"skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        model_in = src
    opset = next(
        (o.version for o in onnx.load(str(src), load_external_data=False).opset_import if o.domain in ("", "ai.onnx")),
        0,
    )
    notes["per_channel"] = opset >= 13
    quantize_static(
        model_in,
        dst,
        _reader(feeds),
        quant_format=QuantFormat.QDQ,
        per_channel=notes["per_channel"],
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    return notes


def _const_inputs(model: onnx.ModelProto, op_type: str, index: int) -> int:
    """How many ``op_type`` nodes take an initializer at input ``index`` (MatMul's B, Gather's data)."""
    names = {i.name for i in model.graph.initializer}
    return sum(1 for n in model.graph.node if n.op_type == op_type and len(n.input) > index and n.input[index] in names)


# onnxruntime 1.32's GPTQ path (its vendored Intel Neural Compressor code, weight_only.py) packs the 4-bit zero points
# of all columns in one run and then reshapes them to one row per column, which fails ("cannot reshape array of size
# 96 into shape (64,newaxis)") when a column has an odd number of blocks; its nodes_to_exclude is ignored on that path.
# Blocks of 32 (the quantizer's command-line default) give every MatMul of MiniLM and PP-OCRv6 an even count; a
# MatMul still odd gets the smallest larger power-of-two block that makes it even (counted in the row's notes).
GPTQ_BLOCK = 32


def _even_blocks(model: onnx.ModelProto, block: int) -> dict[str, dict[str, int]]:
    """Per-node block sizes (``customized_weight_config``) for the MatMuls whose weight has an odd block count."""
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in inits:
            k = inits[n.input[1]].dims[0]
            if (-(-k // block)) % 2:
                fix = next((b for b in (block << i for i in range(1, 12)) if (-(-k // b)) % 2 == 0), None)
                if fix is not None:
                    out[n.name] = {"group_size": fix}
    return out


def _nbits(algorithm: str):
    def run(src: Path, dst: Path, feeds: Feeds | None) -> dict[str, Any]:
        from onnxruntime.quantization import matmul_nbits_quantizer as mnb

        _quiet()
        model = onnx.load(str(src))
        matmuls = _const_inputs(model, "MatMul", 1)
        if not matmuls:
            raise NotApplicable("no MatMul with a constant weight (MatMulNBits quantizes MatMul only, not Conv/Gemm)")
        notes: dict[str, Any] = {"matmuls": matmuls}
        block = 128  # MatMulNBitsQuantizer's default
        if algorithm == "rtn":
            config: Any = mnb.DefaultWeightOnlyQuantConfig(bits=4)
        elif algorithm == "rtn+gather":
            gathers = _const_inputs(model, "Gather", 0)
            if not gathers:
                raise NotApplicable("no Gather on a constant table (no embedding to quantize)")
            notes["gathers"] = gathers
            config = mnb.DefaultWeightOnlyQuantConfig(bits=4, op_types_to_quantize=("MatMul", "Gather"))
        elif algorithm == "hqq":
            config = mnb.HQQWeightOnlyQuantConfig(bits=4)
        elif algorithm == "gptq":
            config = mnb.GPTQWeightOnlyQuantConfig(calibration_data_reader=_reader(feeds))
            block = GPTQ_BLOCK
            config.customized_weight_config = _even_blocks(model, block)
            if config.customized_weight_config:
                notes["larger_blocks"] = config.customized_weight_config
        else:
            raise ValueError(algorithm)
        quantizer = mnb.MatMulNBitsQuantizer(model, block_size=block, algo_config=config)
        quantizer.process()
        quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)
        return notes

    return run


IMPORTS = ("onnxruntime.quantization", "onnxruntime.quantization.matmul_nbits_quantizer")
TOOLS: list[Tool] = [
    Tool(
        "ort-dynamic/8",
        "ORT quantize_dynamic int8",
        "ORT quantize_dynamic int8",
        8,
        False,
        dynamic_int8,
        imports=IMPORTS,
    ),
    Tool(
        "ort-static-qdq/8",
        "ORT quantize_static QDQ int8",
        "ORT quantize_static QDQ int8",
        8,
        True,
        static_qdq_int8,
        imports=IMPORTS,
    ),
    Tool("ort-nbits-rtn/4", "ORT MatMulNBits 4b RTN", "ORT MatMulNBits 4b", 4, False, _nbits("rtn"), imports=IMPORTS),
    Tool(
        "ort-nbits-rtn-gather/4",
        "ORT MatMulNBits 4b RTN +Gather",
        "ORT MatMulNBits 4b",
        4,
        False,
        _nbits("rtn+gather"),
        imports=IMPORTS,
    ),
    Tool(
        "ort-nbits-hqq/4",
        "ORT MatMulNBits 4b HQQ",
        "ORT MatMulNBits 4b",
        4,
        False,
        _nbits("hqq"),
        quick=False,
        imports=(*IMPORTS, "torch"),
    ),
    Tool(
        "ort-nbits-gptq/4",
        "ORT MatMulNBits 4b GPTQ",
        "ORT MatMulNBits 4b",
        4,
        True,
        _nbits("gptq"),
        quick=False,
        imports=IMPORTS,
    ),
]
