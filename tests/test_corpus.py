"""Hardening: every input of the generated corpus (tests/corpus.py) through the real CLI entry point.

Most cases run in-process through ``onnx_statq.cli.entry`` (the console script's function) inside click's
isolation, which captures what the process would print; the cases marked ``subprocess`` run a second time as a real
``python -m onnx_statq.cli`` process, to prove the guarantees where the process ends. The terminal summary prints
``corpus: N inputs, T tracebacks, P partial outputs`` (see ``pytest_terminal_summary`` in conftest.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import REPO
from corpus import CASES, SUBPROCESS, Case, Workspace

from onnx_statq.cli import entry

MIN_CORPUS = 30


@dataclass
class Outcome:
    code: int | None
    stdout: str
    stderr: str


def run_in_process(argv: list[str]) -> Outcome:
    """``entry()`` with ``sys.argv`` set, as the console script runs it; an escaping exception counts as a traceback."""
    runner = CliRunner()
    code: int | None
    with runner.isolation() as (out, err, _):
        saved = sys.argv
        sys.argv = ["onnx-statq", *argv]
        tb = ""
        try:
            entry()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            code, tb = None, traceback.format_exc()
        finally:
            sys.argv = saved
        sys.stdout.flush()
        sys.stderr.flush()
        return Outcome(code, out.getvalue().decode(), err.getvalue().decode() + tb)


def run_process(argv: list[str]) -> Outcome:
    env = {k: v for k, v in os.environ.items() if k != "STATQ_DEBUG"}
    env["PYTHONPATH"] = str(REPO)
    res = subprocess.run(
        [sys.executable, "-m", "onnx_statq.cli", *argv], capture_output=True, text=True, env=env, timeout=120
    )
    return Outcome(res.returncode, res.stdout, res.stderr)


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder``: file contents by hash, symlinks by target, folders by name."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root) / name
            rel = str(p.relative_to(folder))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def leftovers(d: Path) -> list[str]:
    """Temp files or folders the atomic save may have left anywhere in the case's folder."""
    return [str(p.relative_to(d)) for p in d.rglob("*") if p.name.startswith((".statq-", "tmp"))]


def problems(c: Case, d: Path, res: Outcome, before: dict[str, str], existed: bool) -> dict[str, object]:
    """What went wrong with one run, by kind (empty lists and False everywhere: all good)."""
    expect = c.expect if isinstance(c.expect, frozenset) else frozenset({c.expect})
    out_dir = d / "out"
    found: dict[str, object] = {
        "traceback": "Traceback" in res.stdout + res.stderr,
        "exit_code": None if res.code in expect else f"{res.code} not in {sorted(expect)}",
        "input_changed": snapshot(d / "in") != before,
        "leftovers": leftovers(d),
        "partial": False,
        "stderr": None,
        "result": None,
    }
    if res.code == 0:
        found["partial"] = sorted(p.name for p in out_dir.iterdir()) != ["q.onnx"]
        if res.stderr.strip():
            found["stderr"] = f"stderr on success: {res.stderr!r}"
        elif not found["partial"] and c.check is not None:
            try:
                c.check(out_dir / "q.onnx")
            except Exception as exc:
                found["result"] = f"{type(exc).__name__}: {exc}"
    else:
        found["partial"] = bool(list(out_dir.iterdir())) or (
            c.output is not None and not existed and os.path.lexists(c.output)
        )
        lines = res.stderr.strip().splitlines()
        if len(lines) != 1 or not lines[0].startswith("onnx-statq: ") or res.stdout.strip():
            found["stderr"] = f"want one line on stderr and nothing on stdout, got {res.stderr!r} / {res.stdout!r}"
    return found


def _clean(out_dir: Path) -> None:
    for p in out_dir.iterdir():
        p.unlink()


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("STATQ_DEBUG", raising=False)


def test_corpus_is_large_enough():
    assert len(CASES) >= MIN_CORPUS, f"corpus: {len(CASES)} inputs, want at least {MIN_CORPUS}"
    assert set(CASES) >= SUBPROCESS and len(SUBPROCESS) >= 5


def test_corpus_exit_codes_are_the_documented_ones():
    """The codes the corpus expects are the typed errors' codes, and the README lists each of them."""
    import corpus

    from onnx_statq import errors

    pairs = {
        corpus.BAD_OPTION: errors.ConfigError,
        corpus.BAD_MODEL: errors.ModelLoadError,
        corpus.BAD_EXTERNAL: errors.ExternalDataError,
        corpus.NO_WEIGHTS: errors.NoWeightsError,
        corpus.BAD_OUTPUT: errors.OutputError,
        corpus.UNSUPPORTED: errors.UnsupportedModelError,
        corpus.BAD_CALIB: errors.CalibrationError,
    }
    readme = " ".join((REPO / "README.md").read_text().split())
    documented = readme[readme.index("Exit codes:") :].split("internal error")[0]
    for code, error in pairs.items():
        assert error.exit_code == code
        assert f" {code} " in documented, (code, documented)


@pytest.mark.parametrize("name", sorted(CASES))
def test_corpus_input(workspace, name, record_property):
    d = workspace.case_dir(name)
    c = CASES[name](workspace, d)
    runs = [("in-process", run_in_process)] + ([("process", run_process)] if name in SUBPROCESS else [])
    report: dict[str, object] = {}
    for how, runner in runs:
        before = snapshot(d / "in")
        existed = c.output is not None and os.path.lexists(c.output)
        res = runner(c.argv)
        found = problems(c, d, res, before, existed)
        record_property("corpus", json.dumps({"how": how, "code": res.code, **found}))
        bad = {k: v for k, v in found.items() if v}
        if bad:
            report[how] = {"code": res.code, **bad, "stderr_text": res.stderr[-2000:], "stdout": res.stdout[-500:]}
        _clean(d / "out")
    assert not report, json.dumps(report, indent=1)
