"""OpenBLAS's spin-wait is shortened when onnx-statq loads numpy first (onnx_statq/_blas.py), and only then."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# what the child prints: the variable, and what numpy's OpenBLAS read from it when it loaded (None: not OpenBLAS)
PROBE = """
import ctypes, glob, os, sys
{imports}
import numpy
libs = glob.glob(os.path.join(os.path.dirname(numpy.__file__) + ".libs", "*openblas*"))
read = ctypes.CDLL(libs[0]).openblas_thread_timeout() if libs else None
print(os.environ.get("OPENBLAS_THREAD_TIMEOUT"), read)
"""


def probe(imports: str, env_value: str | None = None) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if env_value is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = env_value
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(imports=imports)], env=env, capture_output=True, text=True, check=True
    )
    var, read = out.stdout.split()
    if read == "None":
        pytest.skip("numpy is not linked against OpenBLAS here")
    return var, read


def test_the_cli_import_shortens_the_spin_before_numpy_loads():
    assert probe("import onnx_statq.cli") == ("4", "4")


def test_a_program_that_loaded_numpy_first_keeps_openblas_default():
    assert probe("import numpy\nimport onnx_statq") == ("None", "0")


def test_a_value_the_user_set_is_kept():
    assert probe("import onnx_statq", env_value="12") == ("12", "12")
