"""onnx-statq rows: default settings at 8/4/3/2 bits, data-free and calibrated, and the k-means baseline at 4 bits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import Feeds, Tool

FULL_BITS = (8, 4, 3, 2)
QUICK_BITS = (4,)


def _statq(bits: int, method: str = "sigma", calibrated: bool = False):
    def run(src: Path, dst: Path, feeds: Feeds | None) -> dict[str, Any]:
        from onnx_statq import QuantConfig, quantize_file

        report = quantize_file(
            src,
            dst,
            QuantConfig(bits=bits, method=method),
            verify=False,
            calib=feeds if calibrated else None,
            calib_samples=None,  # a list of feeds: use them all
        )
        t = report.timings
        return {
            # load + pass (with calibration) + save; quantize_file's zipped-size accounting is not quantization work
            "quant_s": t["load_s"] + t["quantize_s"] + t["save_s"],
            "layers": len(report.layers),
            "skipped": len(report.skipped),
            "layer_bits": {str(b): n for b, n in sorted(_count(r.bits for r in report.layers).items())},
        }

    return run


def _count(values: Any) -> dict[Any, int]:
    out: dict[Any, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


IMPORTS = ("onnx_statq", "onnx_statq.api", "onnx_statq.calibrate")
TOOLS: list[Tool] = []
for _b in FULL_BITS:
    TOOLS.append(
        Tool(
            f"statq/{_b}",
            f"onnx-statq {_b}b",
            "onnx-statq",
            _b,
            False,
            _statq(_b),
            quick=_b in QUICK_BITS,
            imports=IMPORTS,
        )
    )
for _b in FULL_BITS:
    TOOLS.append(
        Tool(
            f"statq-calib/{_b}",
            f"onnx-statq {_b}b calibrated",
            "onnx-statq calibrated",
            _b,
            True,
            _statq(_b, calibrated=True),
            quick=_b in QUICK_BITS,
            imports=IMPORTS,
        )
    )
TOOLS.append(
    Tool("statq-kmeans/4", "statq k-means 4b", "statq k-means", 4, False, _statq(4, method="kmeans"), imports=IMPORTS)
)
