"""Per-layer records of what the pass did, shared by the CLI table, the JSON report and the API."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["LayerRecord", "Report", "SkipRecord", "sqnr_db"]


def sqnr_db(rel_error: float) -> float:
    """Signal-to-quantization-noise ratio in dB from a relative squared error (inf when exact)."""
    return math.inf if rel_error <= 0 else -10.0 * math.log10(rel_error)


@dataclass(frozen=True)
class LayerRecord:
    name: str
    op: str
    shape: tuple[int, ...]
    representation: str
    bits: int
    k: int
    rel_error: float
    bytes_before: int
    bytes_after: int
    consumers: tuple[str, ...] = ()
    calibration: str = ""
    output_sqnr_datafree_db: float | None = None
    output_sqnr_calibrated_db: float | None = None
    predicted_rel_error: float | None = None  # from the statistics alone (codebook.predict), before any fit
    decode: str = "whole"  # "rows": a Gather table, only the rows each lookup selects decoded (graph.rows)

    @property
    def sqnr_db(self) -> float:
        return sqnr_db(self.rel_error)


@dataclass(frozen=True)
class SkipRecord:
    name: str
    reason: str
    size: int


@dataclass
class Report:
    """Everything a run measured. Filled by the pass, then by io/verify for file sizes and output SQNR."""

    layers: list[LayerRecord] = field(default_factory=list)
    skipped: list[SkipRecord] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    totals: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    verify: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    # the position of a weight among the pass's planned weights -> its predicted relative error (not by name:
    # sibling subgraphs may hold two weights of one name, and each showed the other's prediction)
    predicted: dict[int, float] = field(default_factory=dict)
    sensitivity: dict[str, float] = field(default_factory=dict)  # weight name -> measured, median 1 (calibration)

    def weight_bytes(self) -> tuple[int, int]:
        return sum(r.bytes_before for r in self.layers), sum(r.bytes_after for r in self.layers)

    def skip_summary(self) -> str:
        """The skips counted by kind, commonest first ("12 not a weight input; 3 below min-size"): a reason's head,
        without the node or size it names, which would make every skip a kind of its own."""
        counts = Counter(
            "below min-size" if "below min-size" in s.reason else s.reason.split(" (")[0].split(",")[0]
            for s in self.skipped
        )
        return "; ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def to_dict(self) -> dict[str, Any]:
        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [clean(x) for x in v]
            return v

        layers = [dict(asdict(r), sqnr_db=r.sqnr_db) for r in self.layers]
        return clean(
            {
                "layers": layers,
                "skipped": [asdict(s) for s in self.skipped],
                "config": self.config,
                "totals": self.totals,
                "timings": self.timings,
                "verify": self.verify,
                "calibration": self.calibration,
                "sensitivity": self.sensitivity,
            }
        )
