"""The ``onnx-statq`` command: a thin click layer over :func:`onnx_statq.api.quantize_file`.

``onnx-statq MODEL -o OUT`` is the main job; subcommands (``onnx-statq inspect ...``) share the group. Every
failure is one line on stderr with a distinct exit code (see :mod:`onnx_statq.errors`); set STATQ_DEBUG=1 to see
the traceback of an internal error.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from .api import DEFAULT_CALIB_MASK, DEFAULT_CALIB_SAMPLES, DEFAULT_COMPENSATION, VERIFY_MAX_SAMPLES, quantize_file
from .codebook import Granularity, Method
from .config import DEFAULT_MIN_SIZE, QuantConfig
from .errors import ConfigError, OutputError, StatqError
from .io import write_text_atomic
from .plan import CalibrationMode
from .summary import format_summary
from .workers import MAX_DEFAULT_JOBS

__all__ = ["entry", "main"]

logger = logging.getLogger(__name__)

INTERNAL_ERROR = 70

EXAMPLES = """
\b
Examples:
  onnx-statq model.onnx -o model_q.onnx
  onnx-statq model.onnx -o model_q.onnx --bits 3 --exclude head/MatMul
  onnx-statq model.onnx -o model_q.onnx --exclude '*embeddings*'
  onnx-statq model.onnx -o model_q.onnx --method kmeans --granularity channel --report report.json
  onnx-statq model.onnx -o model_q.onnx --config statq.toml --json
  onnx-statq model.onnx -o model_q.onnx --bits 3 --calib calib.npz --calib-samples 32
  onnx-statq model.onnx -o model_q.onnx --verify-data samples.npz
  onnx-statq model.onnx -o model_q.onnx --bits auto --target-sqnr 20
  onnx-statq model.onnx -o model_q.onnx --bits auto --size-ratio 9
"""


# quantize and inspect read the same config files (inspect shows the choices quantize would make with them)
CONFIG_OPTION = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A .toml or .json config (per-node and per-op-type settings); flags override it.",
)


class _Bits(click.ParamType):
    """An integer width from 1 to 8, or 'auto'."""

    name = "1-8|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | str:
        if isinstance(value, int) or value == "auto":
            return value
        try:
            bits = int(value)
        except ValueError:
            bits = 0
        if not 1 <= bits <= 8:
            self.fail(f"{value!r} is neither a width from 1 to 8 nor 'auto'", param, ctx)
        return bits


_BITS = _Bits()


class _DefaultGroup(click.Group):
    """Treat ``onnx-statq MODEL ...`` as ``onnx-statq quantize MODEL ...``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["quantize", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXAMPLES)
@click.version_option(package_name="onnx-statq")
def main() -> None:
    """Shrink an ONNX model: every large weight becomes a small codebook plus low-bit indices.

    The output runs in plain onnxruntime (desktop and mobile). Run `onnx-statq quantize --help` for all options.
    """


@main.command(epilog=EXAMPLES)
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write the quantized model.",
)
@click.option(
    "--bits",
    type=_BITS,
    default=None,
    help="Index bits per weight (K = 2**bits), 1-8 [4]; 'auto': widths from the statistics for --target-sqnr, "
    "--avg-bits or --size-ratio.",
)
@click.option(
    "--method",
    type=click.Choice([m.value for m in Method]),
    default=None,
    help="Codebook fitting: sigma (statistical, default), kmeans, uniform.",
)
@click.option(
    "--granularity",
    type=click.Choice([g.value for g in Granularity]),
    default=None,
    help="Who shares a codebook: auto (default), tensor, channel.",
)
@click.option(
    "--exclude",
    multiple=True,
    help="Node name, weight name (the table's), op type or glob pattern ('*attention*') to leave in float "
    "(repeatable); an If, Loop or Scan node takes its bodies' weights with it.",
)
@click.option(
    "--min-size", type=click.IntRange(1), default=None, help=f"Skip weights with fewer elements. [{DEFAULT_MIN_SIZE}]"
)
@CONFIG_OPTION
@click.option(
    "--allocation",
    type=click.Choice(["auto", "fixed"]),
    default=None,
    help="auto (default): bits per layer for an average of --bits (or --avg-bits); fixed: --bits everywhere.",
)
@click.option(
    "--avg-bits",
    type=click.FloatRange(2.0, 8.0),
    default=None,
    help="Average bits per weight for --allocation auto (default: --bits); per-node/op-type bits stay fixed.",
)
@click.option(
    "--target-sqnr",
    type=click.FloatRange(1.0, 100.0, min_open=True),
    default=None,
    help="Per-layer weight SQNR in dB: each layer gets the fewest bits predicted to reach it.",
)
@click.option(
    "--size-ratio",
    type=click.FloatRange(1.0, 64.0, min_open=True),
    default=None,
    help="Make the weights this many times smaller than the input's; bits go where they reduce error most.",
)
@click.option(
    "--calib",
    type=click.Path(path_type=Path),
    default=None,
    help="Calibration data: an .npz named like the inputs (samples first) or a folder of .npz feeds.",
)
@click.option(
    "--calib-samples",
    type=click.IntRange(1),
    default=DEFAULT_CALIB_SAMPLES,
    show_default=True,
    help="Use at most this many calibration samples.",
)
@click.option(
    "--calib-mode",
    type=click.Choice([m.value for m in CalibrationMode]),
    default="sequential",
    show_default=True,
    help="sequential: fit each layer on the quantized stream; independent: on float inputs; none: data-free.",
)
@click.option(
    "--calib-compensation",
    type=click.FloatRange(0.0, 1.0),
    default=DEFAULT_COMPENSATION,
    help="Share of upstream error each layer is fitted to undo (1: reproduce the float output; 0: GPTQ target). "
    "Default: 0 on MatMul layers (transformer residual blocks), 0.5 on the others.",
)
@click.option(
    "--calib-mask",
    default=DEFAULT_CALIB_MASK,
    show_default=True,
    metavar="INPUT|auto|none",
    help="A [batch, sequence] input whose zeros mark padding: MatMul layers are fitted on the real tokens only. "
    "auto: an input named attention_mask, if any; none: fit every position.",
)
@click.option(
    "--calib-sensitivity",
    "sensitivity",
    is_flag=True,
    default=None,
    help="Weigh each layer in the bit allocation by its measured effect on the outputs (one run per layer).",
)
@click.option(
    "--report",
    "report_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the full report as JSON to this file.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
@click.option("--no-verify", is_flag=True, help="Skip the onnxruntime check of the output.")
@click.option(
    "--verify-data",
    type=click.Path(path_type=Path),
    default=None,
    help="Run the check on these inputs instead of random ones (the forms --calib takes; at most "
    f"{VERIFY_MAX_SAMPLES} samples); random inputs can read far lower than real ones.",
)
@click.option(
    "--format",
    "out_format",
    type=click.Choice(["onnx", "ort"]),
    default="onnx",
    show_default=True,
    help="ort: onnxruntime's mobile format, at OUTPUT with the suffix .ort, plus the operator config of a reduced "
    "build; the decode stays in the file and runs with the model (docs/mobile.md).",
)
@click.option(
    "--jobs",
    type=click.IntRange(1),
    default=None,
    help="Threads for the per-weight numerics and the calibration batches; the output is the same for any N, 1 "
    "runs one weight (and one batch) at a time. "
    f"[the CPUs available, at most {MAX_DEFAULT_JOBS}]",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or table.")
def quantize(**opts: Any) -> None:
    """Quantize MODEL and write it to OUTPUT."""
    given = _given_on_command_line(click.get_current_context())
    _run(lambda: _quantize(**opts, _given=given))


_CALIB_ONLY = {
    "calib_mode": "--calib-mode",
    "calib_samples": "--calib-samples",
    "calib_compensation": "--calib-compensation",
    "calib_mask": "--calib-mask",
    "sensitivity": "--calib-sensitivity",
}


def _given_on_command_line(ctx: click.Context) -> set[str]:
    return {
        p.name for p in ctx.command.params if p.name and ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE
    }


def _refuse_idle_calib_options(opts: dict[str, Any], given: set[str]) -> None:
    """A calibration option without --calib does nothing: say so, as --verify-data with --no-verify does, instead of
    leaving the user to believe a mask or sensitivities were used (a misspelt --calib-mask name passed unseen)."""
    if opts.get("calib") is None:
        idle = [flag for name, flag in _CALIB_ONLY.items() if name in given]
        if idle:
            raise ConfigError(f"{', '.join(idle)} only act{'s' if len(idle) == 1 else ''} with --calib DATA")
    elif opts.get("calib_mode") == "none":  # the data is not read: nothing calibrates, nothing measures
        # a warning, not an error: the docs compare a calibrated command with the same one plus --calib-mode none
        idle = [flag for name, flag in _CALIB_ONLY.items() if name in given and name != "calib_mode"]
        also = f" ({', '.join(idle)} do{'es' if len(idle) == 1 else ''} nothing)" if idle else ""
        logger.warning("--calib-mode none: the calibration data is not read%s", also)


def _config(opts: dict[str, Any]) -> QuantConfig:
    """The config file's settings (or the defaults) with the flags given on top; ``inspect`` passes only some."""
    config = QuantConfig.from_file(opts["config_file"]) if opts.get("config_file") else QuantConfig()
    keys = (
        "bits",
        "method",
        "granularity",
        "min_size",
        "avg_bits",
        "allocation",
        "target_sqnr",
        "size_ratio",
        "sensitivity",
        "jobs",
    )
    return config.layered(**{k: opts.get(k) for k in keys}, exclude=tuple(opts.get("exclude") or ()) or None)


def _quantize(_given: set[str], **opts: Any) -> None:
    _refuse_idle_calib_options(opts, _given)
    _refuse_clobbering(opts)
    config = _config(opts)
    show = not opts["quiet"] and not opts["as_json"] and sys.stderr.isatty()
    bar = click.progressbar(length=1, label="quantizing", file=sys.stderr) if show else None
    if bar is not None:
        bar.__enter__()

    def progress(done: int, total: int, name: str) -> None:
        if bar is not None:
            bar.length = max(total, 1)
            bar.update(done - bar.pos)

    save: Any = quantize_file
    if opts["out_format"] == "ort":
        from .mobile import quantize_file_ort as save
    try:
        report = save(
            opts["model"],
            opts["output"],
            config,
            verify=not opts["no_verify"],
            progress=progress,
            calib=opts["calib"],
            calib_samples=opts["calib_samples"],
            calib_mode=opts["calib_mode"],
            calib_compensation=opts["calib_compensation"],
            calib_mask=opts["calib_mask"],
            verify_data=opts["verify_data"],
        )
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    if opts["report_file"]:
        try:
            write_text_atomic(opts["report_file"], json.dumps(report.to_dict(), indent=2))
        except OutputError as exc:  # the model is whole and in place: say so, a script may otherwise redo the work
            written = ", ".join(report.totals.get("outputs") or [str(opts["output"])])
            raise OutputError(f"{exc} (the model itself was written: {written})") from None
    if opts["as_json"]:
        click.echo(json.dumps(report.to_dict(), indent=2))
    elif not opts["quiet"]:
        click.echo(format_summary(report))
        if opts["out_format"] == "ort":
            click.echo("wrote: " + ", ".join(report.totals["outputs"]))


def _refuse_clobbering(opts: dict[str, Any]) -> None:
    """Before any work: the output and the report must not overwrite an input, and the report must be writable.

    (``quantize_file`` checks the output against the model, its external data and the calibration and verification
    data.)
    """
    inputs = [opts[k] for k in ("model", "config_file", "calib", "verify_data") if opts.get(k) is not None]
    outputs = [(opts["output"], "output")] + ([(opts["report_file"], "report")] if opts.get("report_file") else [])
    if opts.get("out_format") == "ort":  # what --format ort writes instead of the output path itself
        from .mobile.ort_format import config_path, ort_path

        ort = ort_path(opts["output"])
        resolved = Path(os.path.realpath(ort))  # through a link, the config goes beside the link's target
        outputs += [(ort, "output"), (config_path(ort), "output"), (config_path(resolved), "output")]
    for path, what in outputs:
        for src in inputs:
            if os.path.realpath(path) == os.path.realpath(src):
                raise OutputError(f"{what} path {path} would overwrite the input {src}; inputs are never overwritten")
    report = opts.get("report_file")
    if report is not None:
        written = [opts["output"]]
        if opts.get("out_format") == "ort":  # what --format ort writes instead of the output path itself
            from .mobile.ort_format import config_path, ort_path

            ort = ort_path(opts["output"])
            written += [ort, config_path(ort)]
        if any(os.path.realpath(report) == os.path.realpath(p) for p in written):
            raise OutputError(f"the report and the output are the same file: {report}")
        if not os.path.isdir(report.parent) or os.path.isdir(report):
            raise OutputError(f"cannot write the report {report}: no such folder, or it is a folder")


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that cleanup runs as for Ctrl-C: its default action ends the process
    at once, and left the staging folders (``.statq-*``, with a partial output in them) behind."""


def _terminate(signum: int, frame: Any) -> None:
    raise _Terminated


def _run(job: Any) -> None:
    """Turn every failure into one line on stderr and a distinct exit code."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        job()
    except StatqError as exc:
        click.echo(f"onnx-statq: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit:
        raise
    except KeyboardInterrupt as exc:
        click.echo("onnx-statq: interrupted", err=True)
        sys.exit(143 if isinstance(exc, _Terminated) else 130)
    except Exception as exc:
        if os.environ.get("STATQ_DEBUG"):
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        click.echo(f"onnx-statq: internal error: {type(exc).__name__}: {msg} (set STATQ_DEBUG=1 for details)", err=True)
        sys.exit(INTERNAL_ERROR)


@main.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--bits", type=click.IntRange(1, 8), default=None, help="Bits the default pass would use. [4]")
@click.option(
    "--plot",
    "plot_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write one PNG per quantized weight (histogram and codebook levels) here; needs onnx-statq[plot].",
)
@CONFIG_OPTION
@click.option("--exclude", multiple=True, help="As for quantizing: left float, and listed with the skips.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def inspect_command(
    model: Path,
    bits: int | None,
    plot_dir: Path | None,
    config_file: Path | None,
    exclude: tuple[str, ...],
    as_json: bool,
) -> None:
    """Per-weight statistics and what the pass would choose for each weight (by default, or with --config and
    --exclude as a quantization would take them), without writing a model."""

    def job() -> None:
        from .inspect import format_table, inspect_model

        config = _config({"config_file": config_file, "bits": bits, "exclude": exclude})
        ins = inspect_model(model, config, plot_dir=plot_dir)
        click.echo(json.dumps(ins.to_dict(), indent=2) if as_json else format_table(ins))

    _run(job)


@main.command("check")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--data",
    type=click.Path(exists=False, path_type=Path),
    default=None,
    help="Run on these inputs (an .npz named like the inputs, samples first, or a folder of .npz feeds; at most "
    "8 samples) instead of random ones, whose dynamic dims get small sizes that some models refuse.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a report.")
def check_command(model: Path, data: Path | None, as_json: bool) -> None:
    """Does MODEL load and run in onnxruntime (CPU), convert to .ort, and what would NNAPI and CoreML take?

    Exits non-zero (10) when it does not load, run or convert, or uses an op without a CPU kernel; 8 when --data
    does not match the model's inputs.
    """

    def job() -> None:
        from .mobile import check_model, format_check, raise_if_failed

        res = check_model(model, data=data)
        click.echo(json.dumps(res.to_dict(), indent=2) if as_json else format_check(res))
        raise_if_failed(res)

    _run(job)


def _quiet_libraries() -> None:
    """onnx-graphsurgeon prints its warnings to stdout (a bfloat16 tensor, a missing ``colored`` module), which
    would corrupt ``--json`` output and add lines to a one-line error; its exceptions still carry the message."""
    try:
        from onnx_graphsurgeon.logger import G_LOGGER
    except ImportError:  # pragma: no cover - a dependency, but never worth failing the CLI over
        return
    G_LOGGER.severity = G_LOGGER.CRITICAL + 1


def entry() -> None:
    """Console-script entry: click's own usage errors also become one line and exit code 2."""
    _quiet_libraries()
    try:
        main.main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("onnx-statq: aborted", err=True)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError:
        click.echo("onnx-statq: error: missing MODEL; usage: onnx-statq MODEL -o OUT [OPTIONS] (see --help)", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        lines = exc.format_message().strip().splitlines() or [type(exc).__name__]
        click.echo(f"onnx-statq: error: {lines[0]}", err=True)
        sys.exit(2)


if __name__ == "__main__":  # as the console script: the library's warnings reach stderr (python's last resort)
    entry()
