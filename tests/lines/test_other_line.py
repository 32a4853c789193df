"""The other TransformerLens line passes the engine, family, equivalence and acceptance tiers.

Runs them (tests/helpers/other_line.py's selection) in ``$ALIGNMENT_PROBE_OTHER_LINE_PYTHON``, an interpreter
with the other line installed (CI: ``.ci-venv-tl4`` from ``constraints/tl4.txt``); skipped, saying how to run it,
where that is unset.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.helpers import other_line


def other_python_or_skip() -> str:
    python = other_line.other_python()
    if python is None:
        pytest.skip(other_line.how_to_run())
    return python


def transformer_lens_version(python: str) -> str:
    code = "import importlib.metadata as m; print(m.version('transformer-lens'))"
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_other_line_is_another_line():
    """The variable names an interpreter with the other major version of TransformerLens: two runs of the same
    line would pass this module without testing anything new."""
    python = other_python_or_skip()
    here, there = transformer_lens_version(sys.executable), transformer_lens_version(python)
    assert here.split(".")[0] != there.split(".")[0], (
        f"{other_line.VAR}={python} has transformer-lens {there}, the same line as this interpreter ({here}): "
        "point it at an environment built with the other constraints file (constraints/tl4.txt or constraints/cpu.txt)"
    )


def test_other_line_tiers():
    python = other_python_or_skip()
    code, output, seconds = other_line.wait()
    tail = output[-12000:]
    where = f"{' '.join(other_line.command(python, other_line.REPO / '<tmp>'))} ({seconds:.0f} s)"
    assert code is not None, (
        f"the other line's tests ran past ${other_line.TIMEOUT_VAR} and were stopped: {where}\n{tail}"
    )
    assert code != 5, f"the other line's selection collected no test (paths moved?): {where}\n{tail}"
    assert code == 0, f"the other line's engine, family, equivalence or acceptance tests failed: {where}\n{tail}"
    assert re.search(r"\d+ passed", tail), f"the other line's run passed nothing: {where}\n{tail}"
