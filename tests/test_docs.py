"""The commands shown in docs/*.md run as written, so the docs cannot go stale."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

DOC_COMMANDS = [
    (doc.name, line.strip())
    for doc in sorted((REPO / "docs").glob("*.md"))
    for block in re.findall(r"```bash\n(.+?)\n```", doc.read_text(), re.S)
    for line in block.splitlines()
    if line.strip().startswith("onnx-statq models/")
]


DOC_PYTHON = [
    (doc.name, block)
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    for block in re.findall(r"```python\n(.+?)\n```", doc.read_text(), re.S)
    if "models/digits/" in block
]


def test_docs_have_runnable_python():
    assert {doc for doc, _ in DOC_PYTHON} >= {"README.md", "integration.md"}


@pytest.mark.parametrize("doc, block", DOC_PYTHON)
def test_doc_python_runs(tmp_path: Path, doc: str, block: str):
    """The Python examples on the bundled model run as written (the Olive one needs torch and is left out)."""
    (tmp_path / "models").symlink_to(REPO / "models")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert res.returncode == 0, f"{doc}:\n{block}\n{res.stderr}"


def test_docs_have_runnable_commands():
    assert DOC_COMMANDS, "docs should show at least one command on the bundled model"


@pytest.mark.parametrize("doc, command", DOC_COMMANDS)
def test_doc_command_runs(tmp_path: Path, doc: str, command: str):
    (tmp_path / "models").symlink_to(REPO / "models")
    argv = [sys.executable, "-m", "onnx_statq.cli", *shlex.split(command)[1:]]
    res = subprocess.run(
        argv, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO))
    )
    assert res.returncode == 0, f"{doc}: {command}\n{res.stderr}"


def test_every_package_is_in_the_wheel():
    # pyproject lists packages by hand: a subpackage left out imports in the repository and is missing from a wheel
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "onnx_statq").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)


def test_readme_usage_names_every_quantize_option():
    # the usage block is where a user looks for a flag: one the CLI has and the block lacks (-q/--quiet was) goes unseen
    import click

    from onnx_statq.cli import check_command, inspect_command, quantize

    block = re.search(r"```\n(onnx-statq MODEL .+?)\n```", (REPO / "README.md").read_text(), re.S)
    assert block is not None, "README should show the CLI's usage block"
    shown = set(re.findall(r"(?<![\w-])--?[a-z][a-z-]*", block.group(1)))
    options = [p for p in quantize.params if isinstance(p, click.Option) and p.name != "help"]
    missing = [p.opts[0] for p in options if not shown & {*p.opts, *p.secondary_opts}]
    assert not missing, missing
    flags = {o for p in options for o in (*p.opts, *p.secondary_opts)}
    long_shown = {o for o in shown if o.startswith("--")}
    subcommands = {o for cmd in (inspect_command, check_command) for p in cmd.params for o in p.opts}
    assert long_shown <= flags | subcommands, sorted(long_shown - flags - subcommands)  # the block shows those too
