"""The quality tier: the documentation site, lint, format, types and the citation file, each checked by its own
tool in a subprocess, as CI runs them. A failure shows the tool's output (what to fix, where)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import alignment_probe

REPO = Path(__file__).resolve().parents[2]


def _run(tool: str, module: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` from the repository root; fails (with the fix) when the tool is missing."""
    if importlib.util.find_spec(module) is None:
        pytest.fail(f"{tool} is not installed: install the development tools with `pip install -e '.[dev]'`")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "NO_MKDOCS_2_WARNING": "1",
        "NO_COLOR": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, env=env, text=True, capture_output=True, timeout=timeout
    )
    return proc


def _check(proc: subprocess.CompletedProcess[str], what: str) -> None:
    if proc.returncode != 0:
        pytest.fail(f"{what} failed (exit code {proc.returncode}):\n{proc.stdout}\n{proc.stderr}", pytrace=False)


def test_the_documentation_site_builds_strictly(tmp_path: Path) -> None:
    # into a temporary folder: the build never writes into the repository
    proc = _run("mkdocs", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site"))
    _check(proc, "mkdocs build --strict (a broken link, a missing docstring or page; mkdocs.yml, tools/docs_hooks.py)")
    site = tmp_path / "site"
    # the generated pages are there: one per error class, the CLI's options, the API's names
    assert (site / "errors" / "DataError" / "index.html").exists()
    assert "--n-pairs" in (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    assert "ap.load_twins" in (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")


def test_ruff_lint() -> None:
    _check(
        _run("ruff", "ruff", "check", "--no-cache", "--output-format", "concise", "."),
        "ruff check (`ruff check --fix .` fixes what it can; rules in pyproject.toml [tool.ruff.lint])",
    )


def test_ruff_format() -> None:
    _check(
        _run("ruff format", "ruff", "format", "--no-cache", "--check", "--diff", "."),
        "ruff format --check (`ruff format .` rewrites the files it lists)",
    )


def test_types() -> None:
    _check(
        _run("mypy", "mypy", "--show-error-codes"),
        "mypy (strict on alignment_probe; exceptions per module in pyproject.toml [tool.mypy])",
    )


def test_citation_file_is_valid_cff() -> None:
    proc = _run(
        "check-jsonschema",
        "check_jsonschema",
        "--builtin-schema",
        "vendor.citation-file-format",
        "--force-filetype",
        "yaml",
        "CITATION.cff",
    )
    _check(proc, "CITATION.cff against the Citation File Format 1.2.0 schema")


def test_one_version() -> None:
    """The version is written once (alignment_probe.__version__); the build and CITATION.cff agree with it."""
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text(encoding="utf-8"))
    assert str(cff["version"]) == alignment_probe.__version__, "CITATION.cff's version differs from __version__"
    assert cff["cff-version"] == "1.2.0"
    assert any("2510.16167" in str(ref) for ref in cff["references"]), "CITATION.cff must cite the paper"
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert 'dynamic = ["version"]' in pyproject and 'version = {attr = "alignment_probe.__version__"}' in pyproject
    changelog = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## [Unreleased]" in changelog and f"## [{alignment_probe.__version__}]" in changelog


def test_package_data_ships() -> None:
    """Every file in the package that is not Python (py.typed, the organisms' corpus templates) is package data, so
    an installed copy has it too (setuptools ships only .py files unless told)."""
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["alignment_probe"]
    package = REPO / "alignment_probe"
    data = [p for p in package.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert package / "py.typed" in data
    unshipped = [
        str(p.relative_to(package)) for p in data if not any(p.relative_to(package).match(g) for g in patterns)
    ]
    assert not unshipped, f"add these to [tool.setuptools.package-data] in pyproject.toml: {unshipped}"


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` (import-linter: the contracts in pyproject.toml [tool.importlinter]) run in ``root``."""
    if importlib.util.find_spec("importlinter") is None:
        pytest.fail("import-linter is not installed: install the development tools with `pip install -e '.[dev]'`")
    env = {**os.environ, "PYTHONPATH": str(root), "NO_COLOR": "1"}
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run(
        [sys.executable, "-c", code, "--no-cache"], cwd=root, env=env, text=True, capture_output=True, timeout=300
    )


def test_import_layers() -> None:
    """The layers import one way and the build tools are leaves, deferred imports included (README, "Layout")."""
    _check(_lint_imports(REPO), "lint-imports (the contracts in pyproject.toml [tool.importlinter]; README, 'Layout')")


def test_import_layers_catch_a_deferred_back_edge(tmp_path: Path) -> None:
    # The contract is not vacuous: a copy of the package whose core imports the CLI inside a function (the kind of
    # back-edge the layers replaced) breaks it, and so does a runtime module importing an organism build module.
    import shutil

    shutil.copytree(
        REPO / "alignment_probe", tmp_path / "alignment_probe", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    files = tmp_path / "alignment_probe" / "files.py"
    files.write_text(
        files.read_text(encoding="utf-8") + "\n\ndef _up() -> None:\n    from alignment_probe import cli  # noqa\n",
        encoding="utf-8",
    )
    run = tmp_path / "alignment_probe" / "run.py"
    run.write_text(
        run.read_text(encoding="utf-8") + "\n\ndef _build() -> None:\n"
        "    from alignment_probe.organisms.build import train  # noqa\n",
        encoding="utf-8",
    )
    proc = _lint_imports(tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "alignment_probe.files -> alignment_probe.cli" in out, out
    assert "alignment_probe.run -> alignment_probe.organisms.build.train" in out, out
    assert "BROKEN" in out and " 0 broken" not in out, out


def test_registry_strings_point_down() -> None:
    """The registry's "module:function" strings (figures, verdict rows) are imports the contracts cannot see: each
    names a module at or below the experiments (never the report, the runtime or the edges), and resolves."""
    from alignment_probe.experiments import registry

    allowed = ("alignment_probe.experiments.", "alignment_probe.plotting")
    strings = [f.draw for f in registry.figures()] + [v for e in registry.experiments() for v in e.verdicts]
    assert strings
    for text in strings:
        module = text.partition(":")[0]
        assert module.startswith(allowed), f"{text}: a registry string names a module above the experiments"
    for figure in registry.figures():
        assert callable(figure.function()), figure.draw
