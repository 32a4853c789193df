"""The install fits a researcher's environment: pyproject.toml's ranges admit both TransformerLens lines and current
torch, both constraints files pin versions those ranges admit, every library the code imports is declared, and pip,
asked to install the package into an environment that already holds a TransformerLens line and a torch, would change
neither (a dry run, offline)."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.helpers import other_line

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
LINES = {"cpu.txt": 3, "tl4.txt": 4}  # constraints file -> the TransformerLens major version it installs
# Imported, but installed by nobody on purpose: each is optional and its absence is a clear error where it is used.
UNDECLARED = {
    "kaleido": "static PNG/SVG export (report/figures.py: save_static says what to install; the HTML report needs none)",
    "choreographer": "kaleido's browser finder, imported only beside kaleido in report/figures.py",
}


def requirements(extras: bool = False) -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in PYPROJECT["dependencies"]]
    if extras:
        reqs += [Requirement(r) for group in PYPROJECT["optional-dependencies"].values() for r in group]
    return {canonicalize_name(r.name): r for r in reqs}


def pins(constraints: str) -> dict[str, Version]:
    out = {}
    for line in (REPO / "constraints" / constraints).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"constraints/{constraints}: {line!r} is not an exact pin"
            out[canonicalize_name(req.name)] = Version(spec.version)
    return out


@pytest.mark.parametrize("constraints", sorted(LINES))
def test_constraints_pin_what_pyproject_admits(constraints):
    core = requirements()
    for name, version in pins(constraints).items():
        assert name in core, f"constraints/{constraints} pins {name}, which pyproject.toml does not require"
        assert core[name].specifier.contains(version, prereleases=True), (
            f"constraints/{constraints} pins {name}=={version}, outside pyproject.toml's {core[name]}: "
            "widen the range or change the pin"
        )
    assert pins(constraints)["transformer-lens"].major == LINES[constraints], (
        f"constraints/{constraints} should install the TransformerLens {LINES[constraints]}.x line"
    )


def test_both_lines_pin_the_same_torch():
    """Only the TransformerLens line differs between CI's two environments (the CPU wheel of torch is the same)."""
    assert pins("cpu.txt")["torch"] == pins("tl4.txt")["torch"], "constraints/cpu.txt and tl4.txt pin different torch"


def test_torch_range_admits_newer_releases():
    """A researcher's newer (CUDA) torch is kept: the range admits the releases after the pinned one."""
    pinned = pins("cpu.txt")["torch"]
    for newer in (Version(f"{pinned.major}.{pinned.minor + 1}.0"), Version(f"{pinned.major + 1}.0.0")):
        assert requirements()["torch"].specifier.contains(newer), f"pyproject.toml's torch range refuses {newer}"


def third_party_imports() -> dict[str, str]:
    """Top-level module -> the first place the package imports it (every import, in functions too)."""
    found: dict[str, str] = {}
    for path in sorted((REPO / "alignment_probe").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "alignment_probe":
                    found.setdefault(top, f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def test_every_imported_library_is_declared():
    declared = set(requirements(extras=True))
    by_module = importlib.metadata.packages_distributions()
    missing = []
    for module, where in third_party_imports().items():
        if module in UNDECLARED:
            continue
        dists = {canonicalize_name(d) for d in by_module.get(module, [])}
        if not dists:
            missing.append(f"{module} ({where}): not installed here, and not declared")
        elif not dists & declared:
            missing.append(f"{module} ({where}): from {sorted(dists)}, not in pyproject.toml's dependencies or extras")
    assert not missing, "imported but not declared (add to [project] dependencies, or an extra):\n" + "\n".join(missing)


def dry_run(python: str, tmp_path: Path) -> list[tuple[str, str]]:
    """What pip would install or change for the package's requirements in ``python``'s environment.
    ``--no-index``: offline, so anything not already installed is an error, and one that must change is too."""
    req = tmp_path / "requirements.txt"
    req.write_text("\n".join(PYPROJECT["dependencies"]) + "\n")
    report = tmp_path / "report.json"
    cmd = [
        python,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--quiet",
        "--no-index",
        "--report",
        str(report),
        "-r",
        str(req),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (
        f"pip cannot install the package's requirements into {python}'s environment without changing it "
        f"(a pin that excludes what is installed?):\n{proc.stdout}\n{proc.stderr}"
    )
    return [(i["metadata"]["name"], i["metadata"]["version"]) for i in json.loads(report.read_text())["install"]]


def installed(python: str, name: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({name!r}))"
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize("line", ["this", "other"])
def test_installing_changes_neither_torch_nor_transformer_lens(line, tmp_path):
    if line == "this":
        python = sys.executable
    else:
        python = other_line.other_python() or pytest.skip(
            other_line.how_to_run("the install check on the other TransformerLens line")
        )
    before = {name: installed(python, name) for name in ("torch", "transformer-lens")}
    changes = dry_run(python, tmp_path)
    assert not changes, f"installing the package into {python}'s environment ({before}) would install {changes}"
