"""onnxsim's weight-only quantizers (PyPI ``onnxsim`` 0.8.x): K-means and NF4 (data-free), SqueezeLLM and GPTVQ
(calibrated), each called with its defaults.

All four handle MatMul and plain Gemm layers with a constant 2-D float32 weight only (not Conv, not Gather). In 0.8.1
``quantize_weight_only_kmeans`` and ``quantize_weight_only_nf4`` (default arguments) delegate to C++ ports that write
the dequantized weights back as float32 initializers: the model computes with 16-level weights but the file does not
shrink. Their rows therefore also carry the nominal size the codes would take if packed (4 bits per weight plus a
16-entry codebook per layer for K-means; plus one float32 scale per 64 weights for NF4).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from . import Feeds, Tool


def _call(name: str, calibrated: bool):
    def run(src: Path, dst: Path, feeds: Feeds | None) -> dict[str, Any]:
        import onnxsim

        fn = getattr(onnxsim, name)
        model = onnx.load(str(src))
        out = fn(model, calibration_data=feeds) if calibrated else fn(model)
        onnx.save(out, str(dst))
        return {"onnxsim": onnxsim.__version__ if hasattr(onnxsim, "__version__") else "?", "function": name}

    return run


TOOLS: list[Tool] = [
    Tool(
        "onnxsim-kmeans/4",
        "onnxsim K-means 4b",
        "onnxsim",
        4,
        False,
        _call("quantize_weight_only_kmeans", False),
        simulated_bits_per_weight=4.0,
        imports=("onnxsim",),
    ),
    Tool(
        "onnxsim-nf4/4",
        "onnxsim NF4",
        "onnxsim",
        4,
        False,
        _call("quantize_weight_only_nf4", False),
        simulated_bits_per_weight=4.0 + 32.0 / 64,
        imports=("onnxsim",),
    ),
    Tool(
        "onnxsim-squeezellm/4",
        "onnxsim SqueezeLLM 4b",
        "onnxsim calibrated",
        4,
        True,
        _call("quantize_weight_only_squeezellm", True),
        quick=False,
        imports=("onnxsim",),
    ),
    Tool(
        "onnxsim-gptvq/4",
        "onnxsim GPTVQ (2-d, 256)",
        "onnxsim calibrated",
        4,
        True,
        _call("quantize_weight_only_gptvq", True),
        quick=False,
        imports=("onnxsim",),
    ),
]
