"""The one typed configuration behind the CLI, the API and the toolchain passes; validated when built.

Settings resolve per node name first (or the name of the weight it reads), then per op type, then globally, so a user
can lift one sensitive layer to 8 bits without restating everything else.
"""

from __future__ import annotations

import enum
import fnmatch
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .codebook import MAX_BITS, Granularity, Method
from .codebook.allocate import LO_BITS
from .errors import ConfigError
from .workers import default_jobs

__all__ = [
    "Allocation",
    "ConfigLike",
    "Granularity",
    "LayerSettings",
    "Method",
    "QuantConfig",
    "Resolved",
    "excludes",
    "is_pattern",
]


class Allocation(enum.StrEnum):
    """AUTO spends the average budget (``avg_bits``, else ``bits``) where the predicted error falls most."""

    AUTO = "auto"
    FIXED = "fixed"


DEFAULT_MIN_SIZE = 1024
REFERENCE_BITS = 4  # with ``bits='auto'``: the width at which the representation (tensor/channel) is chosen


@dataclass(frozen=True)
class LayerSettings:
    """Overrides for some nodes; None means 'inherit'."""

    bits: int | None = None
    method: Method | None = None
    granularity: Granularity | None = None
    skip: bool | None = None  # False keeps a weight that a broader entry or ``exclude`` would skip

    def __post_init__(self) -> None:
        if self.bits is not None:
            _check_bits(self.bits)
        if self.method is not None:
            object.__setattr__(self, "method", _enum(Method, self.method, "method"))
        if self.granularity is not None:
            object.__setattr__(self, "granularity", _enum(Granularity, self.granularity, "granularity"))
        if self.skip is not None and not isinstance(self.skip, bool):  # skip = "no" is a non-empty string
            raise ConfigError(f"skip must be true or false, got {self.skip!r}")


@dataclass(frozen=True)
class Resolved:
    bits: int
    method: Method
    granularity: Granularity
    skip: bool


# the run's target besides a plain width: each excludes the others
TARGETS = ("avg_bits", "size_ratio", "target_sqnr")


@dataclass(frozen=True)
class QuantConfig:
    """Options of one quantization run. Build it directly, or with :meth:`from_dict` / :meth:`from_file`."""

    bits: int = 4
    method: Method = Method.SIGMA
    granularity: Granularity = Granularity.AUTO
    min_size: int = DEFAULT_MIN_SIZE
    exclude: tuple[str, ...] = ()
    channel_tolerance: float = 2.0
    allocation: Allocation = Allocation.AUTO
    avg_bits: float | None = None  # the budget for AUTO allocation; None: ``bits``
    auto_bits: bool = False  # ``--bits auto``: widths from predicted errors alone, for one of the targets below
    target_sqnr: float | None = None  # per-layer weight SQNR in dB: each layer gets the fewest bits that meet it
    size_ratio: float | None = None  # whole-model budget: the output this many times smaller than the input
    sensitivity: bool = False  # with calibration data, weigh each layer's error by its measured output sensitivity
    jobs: int | None = None  # threads for the per-weight numerics and calibration batches; None: ``default_jobs()``
    nodes: Mapping[str, LayerSettings] = field(default_factory=dict)
    op_types: Mapping[str, LayerSettings] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.bits == "auto":
            object.__setattr__(self, "bits", REFERENCE_BITS)
            object.__setattr__(self, "auto_bits", True)
        _check_bits(self.bits)
        object.__setattr__(self, "method", _enum(Method, self.method, "method"))
        object.__setattr__(self, "granularity", _enum(Granularity, self.granularity, "granularity"))
        object.__setattr__(self, "allocation", _enum(Allocation, self.allocation, "allocation"))
        if isinstance(self.min_size, bool) or not isinstance(self.min_size, int) or self.min_size < 1:
            raise ConfigError(f"min_size must be a positive integer, got {self.min_size!r}")
        tolerance = self.channel_tolerance
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 1.0:
            raise ConfigError(f"channel_tolerance must be a number >= 1, got {self.channel_tolerance!r}")
        if self.avg_bits is not None and (
            isinstance(self.avg_bits, bool)
            or not isinstance(self.avg_bits, (int, float))
            or not 2 <= self.avg_bits <= 8
        ):
            raise ConfigError(f"avg_bits must be a number from 2 to 8, got {self.avg_bits!r}")
        self._check_targets()
        if isinstance(self.exclude, str) or not all(isinstance(e, str) for e in self.exclude):
            raise ConfigError("exclude must be a list of node names, weight names or op types")
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if not isinstance(self.sensitivity, bool):
            raise ConfigError(f"sensitivity must be true or false, got {self.sensitivity!r}")
        if self.sensitivity and self.allocation == Allocation.FIXED:  # it weighs the allocation's choices
            raise ConfigError("sensitivity needs allocation 'auto', not 'fixed'")
        if self.jobs is not None and (isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1):
            raise ConfigError(f"jobs must be a positive integer (1: one weight at a time), got {self.jobs!r}")
        for name in ("nodes", "op_types"):
            given = getattr(self, name)
            if not isinstance(given, Mapping):
                raise ConfigError(f"{name} must be a table of {name[:-1].replace('_', ' ')} to settings, got {given!r}")
            table = {str(k): _layer(v, f"{name}.{k}") for k, v in given.items()}
            object.__setattr__(self, name, MappingProxyType(dict(sorted(table.items()))))

    def _check_targets(self) -> None:
        if not isinstance(self.auto_bits, bool):
            raise ConfigError(f"auto_bits must be true or false, got {self.auto_bits!r}")
        for name, lo, hi in (("target_sqnr", 1.0, 100.0), ("size_ratio", 1.0, 64.0)):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not lo < v <= hi):
                raise ConfigError(f"{name} must be a number above {lo:g} and at most {hi:g}, got {v!r}")
        targets = [n for n in ("avg_bits", "size_ratio", "target_sqnr") if getattr(self, n) is not None]
        if len(targets) > 1:
            raise ConfigError(f"give one target, not {' and '.join(targets)}")
        if self.auto_bits and not targets:
            raise ConfigError("bits 'auto' needs a target: target_sqnr, avg_bits or size_ratio")
        if targets and self.allocation == Allocation.FIXED:
            raise ConfigError(f"{targets[0]} needs allocation 'auto', not 'fixed'")

    def overrides(self, node_name: str, op_type: str, weight_name: str = "") -> list[LayerSettings]:
        """The ``nodes`` and ``op_types`` entries that apply to one use of a weight, most specific first: the node's
        name, then the weight's (the name the report's table shows, which is all a model with unnamed nodes
        offers), then the op type."""
        keys = ((self.nodes, node_name), (self.nodes, weight_name), (self.op_types, op_type))
        return [s for table, key in keys if key and (s := table.get(key)) is not None]

    def resolve(self, node_name: str, op_type: str, weight_name: str = "") -> Resolved:
        """Settings for one consumer node: node name, then weight name, then op type, then the global values."""
        chain = self.overrides(node_name, op_type, weight_name)
        named = {node_name, weight_name, op_type} - {""}
        skip = next((s.skip for s in chain if s.skip is not None), None)
        if skip is None:  # the most specific entry that says decides; then the global exclude list
            skip = any(excludes(e, named) for e in self.exclude)
        return Resolved(
            bits=next((s.bits for s in chain if s.bits is not None), self.bits),
            method=next((s.method for s in chain if s.method is not None), self.method),
            granularity=next((s.granularity for s in chain if s.granularity is not None), self.granularity),
            skip=skip,
        )

    @property
    def budget(self) -> float | None:
        """Average bits per weight to allocate, or None: the same bits everywhere, or a target other than bits."""
        if self.allocation == Allocation.FIXED or self.target_sqnr is not None or self.size_ratio is not None:
            return None
        return float(self.avg_bits if self.avg_bits is not None else self.bits)

    @property
    def workers(self) -> int:
        """Threads the pass encodes on, and calibration runs its batches on: ``jobs``, or by default one per
        available CPU up to a cap (the value is left unresolved in the config, so a config file or report carries no
        count of the machine that wrote it)."""
        return self.jobs if self.jobs is not None else default_jobs()

    @property
    def allocates(self) -> bool:
        """Whether per-layer widths are chosen at all (by budget, size ratio or SQNR target). Not for a 1-bit
        average without another target: the allocation's widths start at 2 bits (``codebook.allocate.LO_BITS``),
        so ``bits=1`` means 1 bit in every layer (it raised KeyError before)."""
        targets = (self.avg_bits, self.size_ratio, self.target_sqnr)
        wide = self.auto_bits or self.bits >= LO_BITS or any(t is not None for t in targets)
        return self.allocation == Allocation.AUTO and wide

    def with_options(self, **changes: Any) -> QuantConfig:
        """A copy with ``changes``; an unknown option is a ConfigError, as in a config file. A width in bits
        replaces ``bits = "auto"`` (it kept it, and the run stayed in auto mode)."""
        _refuse_unknown(changes, "option")
        if isinstance(changes.get("bits"), int) and "auto_bits" not in changes:
            changes = {**changes, "auto_bits": False}
        return replace(self, **changes)

    def layered(self, **options: Any) -> QuantConfig:
        """``options`` laid over this config as the command line's flags are over a config file, the same in the
        CLI, the API and the toolchain passes: a width in bits, a target or ``allocation = "fixed"`` replaces the
        config's target (the targets exclude each other, and the caller's win); ``exclude`` entries are added to
        the config's."""
        options = {k: v for k, v in options.items() if v is not None}
        _refuse_unknown(options, "option")
        given = {k for k in TARGETS if k in options}
        if given or isinstance(options.get("bits"), int) or options.get("allocation") == "fixed":
            options.update({k: None for k in TARGETS if k not in given})
        if "exclude" in options:
            extra = options["exclude"]
            options["exclude"] = (*self.exclude, *([extra] if isinstance(extra, str) else extra))
        return self.with_options(**options)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["exclude"] = list(self.exclude)
        if self.auto_bits:
            out["bits"] = "auto"
            del out["auto_bits"]
        out["nodes"] = {k: _layer_dict(v) for k, v in self.nodes.items()}
        out["op_types"] = {k: _layer_dict(v) for k, v in self.op_types.items()}
        return {k: (str(v) if isinstance(v, (Method, Granularity, Allocation)) else v) for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuantConfig:
        """Strict: an unknown key is an error, so a typo never silently falls back to a default."""
        if not isinstance(data, Mapping):
            raise ConfigError("a config must be a mapping of option names to values")
        _refuse_unknown(data, "config key")
        try:
            return cls(**dict(data))
        except TypeError as exc:
            raise ConfigError(f"bad config: {exc}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> QuantConfig:
        """Read a .json or .toml config file."""
        p = Path(path)
        try:
            text = p.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from None
        try:
            data = tomllib.loads(text.decode()) if p.suffix == ".toml" else json.loads(text)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ConfigError(
                f"config file {p} is not valid {'TOML' if p.suffix == '.toml' else 'JSON'}: {exc}"
            ) from None
        return cls.from_dict(data)


# what the Python API takes as a config: one, its options as a mapping, or a .json / .toml file (api._config)
ConfigLike = QuantConfig | Mapping[str, Any] | str | os.PathLike[str] | None


def _refuse_unknown(keys: Mapping[str, Any], what: str) -> None:
    known = {f.name for f in fields(QuantConfig)}
    unknown = sorted(set(keys) - known)
    if unknown:
        raise ConfigError(f"unknown {what}(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")


def is_pattern(entry: str) -> bool:
    """Whether an ``exclude`` entry is a glob pattern (``*``, ``?``, ``[``) rather than a name."""
    return any(c in entry for c in "*?[")


def excludes(entry: str, names: set[str]) -> bool:
    """Whether ``entry`` (a name, an op type or a case-sensitive glob pattern, ``*`` crossing ``/``) matches one of
    ``names``: patterns let one entry keep float, say, every attention output projection of a transformer. A name
    is matched as it is first (``layer[0].weight`` is a name before it is a pattern)."""
    if entry in names:
        return True
    return is_pattern(entry) and any(fnmatch.fnmatchcase(n, entry) for n in names)


def _check_bits(bits: Any) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise ConfigError(f"bits must be an integer from 1 to {MAX_BITS}, got {bits!r}")


def _enum(kind: Any, value: Any, what: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise ConfigError(f"{what} must be one of {', '.join(m.value for m in kind)}, got {value!r}") from None


def _layer(value: Any, where: str) -> LayerSettings:
    if isinstance(value, LayerSettings):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping")
    known = {f.name for f in fields(LayerSettings)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(unknown)}")
    return LayerSettings(**dict(value))


def _layer_dict(s: LayerSettings) -> dict[str, Any]:
    return {
        f.name: (str(v) if isinstance(v, (Method, Granularity)) else v)
        for f in fields(s)
        if (v := getattr(s, f.name)) is not None
    }
