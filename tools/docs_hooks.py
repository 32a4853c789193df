"""MkDocs hooks: the pages the documentation site derives from the code and the repository's own files.

Generated at every build, so they cannot drift from what they describe:

* ``method/*.md``: one page per section of ``docs/method.md`` (the E-numbered experiments grouped by id), each
  beside the module(s) its heading names (their docstrings, rendered by mkdocstrings) and, for an experiment,
  the names it registers (``experiments/registry.py``);
* ``reference/api.md``: the ``ap.`` names (``alignment_probe.__all__``), from their docstrings;
* ``reference/cli.md``: every command and option of ``alignment-probe``, read from ``cli.build_parser()``;
* ``errors/*.md``: one page per error class (subclasses of ``AlignmentProbeError``): its exit code and its
  docstring's "What to do" paragraph;
* ``changelog.md`` from ``CHANGELOG.md``; the notebooks from ``notebooks/`` (rendered by mkdocs-jupyter).

A module a method heading names that does not exist, an ``ap.`` name or error class without a docstring (or
without its "What to do"), is a warning, and ``mkdocs build --strict`` fails on it.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # document this checkout's package, whatever is installed
    sys.path.insert(0, str(REPO))

log = logging.getLogger("mkdocs.plugins.alignment_probe")  # warnings here fail `mkdocs build --strict`

NOTEBOOKS = ("walkthrough", "your-own-pair")


# --------------------------------------------------------------------------------------------------
# the method pages, from docs/method.md and the experiment registry
# --------------------------------------------------------------------------------------------------


@dataclass
class MethodPage:
    slug: str
    title: str
    body: list[str] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)
    method_id: str | None = None
    sections: list[tuple[str, list[str]]] = field(default_factory=list)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _module_for(path: str) -> str | None:
    """``experiments/patching.py`` or ``patching.py`` → ``alignment_probe.experiments.patching`` (unique match)."""
    path = path.strip()
    if path.endswith("/") and (REPO / "alignment_probe" / path / "__init__.py").exists():  # a package: engine/
        return "alignment_probe." + path.strip("/").replace("/", ".")
    if not path.endswith(".py"):
        return None
    hits = sorted(p for p in (REPO / "alignment_probe").rglob("*.py") if p.as_posix().endswith("/" + path))
    if len(hits) != 1:
        log.warning(f"docs/method.md names `{path}`, which matches {len(hits)} modules of alignment_probe/ (need one)")
        return None
    rel = hits[0].relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _relink(line: str) -> str:
    """Relative links of docs/method.md, seen from method/<page>.md."""
    return re.sub(r"\]\((?!https?:|#|/)([^)]+)\)", r"](../\1)", line)


def method_pages() -> list[MethodPage]:
    text = (REPO / "docs" / "method.md").read_text(encoding="utf-8")
    intro: list[str] = []
    sections: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("## "):
            sections.append((line[3:].strip(), []))
        elif line.startswith("# "):
            continue
        elif sections:
            sections[-1][1].append(_relink(line))
        else:
            intro.append(_relink(line))
    pages: dict[str, MethodPage] = {}
    for heading, body in sections:
        modules = [m for p in re.findall(r"`([^`]+(?:\.py|/))`", heading) if (m := _module_for(p))]
        title = re.sub(r"\s*\(`.*$", "", heading).strip()
        m = re.match(r"(E\d+)\b", title)
        slug = m.group(1).lower() if m else _slug(title)
        page = pages.setdefault(slug, MethodPage(slug, title, method_id=m.group(1) if m else None))
        page.sections.append((re.sub(r"^E\d+\s*—\s*", "", title), body))
        page.modules.extend(x for x in modules if x not in page.modules)
    for page in pages.values():  # two sections of one experiment id (E8, E9): one page, a heading each
        if len(page.sections) == 1:
            page.body = page.sections[0][1]
        else:
            page.title = f"{page.method_id} — " + " and ".join(sub for sub, _ in page.sections)
            page.body = [line for sub, body in page.sections for line in (f"## {sub}", "", *body)]
    # experiments the registry knows whose id has no section in method.md get a page of their own
    from alignment_probe.experiments import registry

    for exp in registry.experiments():
        mid = exp.method
        slug = mid.lower()
        module = (exp.specs or exp.fit or exp.compute or exp.summarize).__module__  # where it registers
        if slug not in pages:
            pages[slug] = MethodPage(slug, f"{mid} — {exp.key}", method_id=mid)
            pages[slug].body.append(
                f"docs/method.md has no section for {mid} yet; the module's docstring below defines it."
            )
        if module not in pages[slug].modules:
            pages[slug].modules.append(module)
    ordered = [p for p in pages.values() if p.method_id is None]
    ordered += sorted((p for p in pages.values() if p.method_id), key=lambda p: int(p.method_id[1:]))  # type: ignore[index]
    overview = MethodPage("index", "The method")
    overview.body = [*intro, "", "| page | implemented in |", "|---|---|"]
    for p in ordered:
        mods = ", ".join(f"`{m}`" for m in p.modules) or "—"
        overview.body.append(f"| [{p.title}]({p.slug}.md) | {mods} |")
    overview.body += ["", "The whole specification on one page: [docs/method.md](../method.md)."]
    return [overview, *ordered]


def _registry_table(method_id: str) -> list[str]:
    from alignment_probe.experiments import registry

    rows = []
    for exp in registry.experiments():
        for n in exp.names:
            if exp.method_of(n.name) == method_id:
                run = "default suite" if exp.default else "opt-in (name it in `--experiments`)"
                rows.append(f"| `{n.name}` | {n.label} | {run} | {n.description} |")
    if not rows:
        return []
    return [
        "",
        "## Names in the run's tables",
        "",
        "| name | label | runs in | what it is |",
        "|---|---|---|---|",
        *rows,
    ]


def render_method_page(page: MethodPage) -> str:
    out = [f"# {page.title}", "", *page.body]
    if page.method_id:
        out += _registry_table(page.method_id)
    if page.modules:
        out += ["", "## Implementation", ""]
        for module in page.modules:
            out += [
                f"::: {module}",
                "    options:",
                "      members: false",
                "      show_root_heading: true",
                "      show_root_full_path: true",
                "      heading_level: 3",
                "",
            ]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------------
# the API, the command line and the errors
# --------------------------------------------------------------------------------------------------


def api_page() -> str:
    import alignment_probe
    from alignment_probe import api

    out = [
        "# Python API: `import alignment_probe as ap`",
        "",
        "The package top level is the API: these names are stable (everything else is importable but may move).",
        "Each entry below is generated from its docstring.",
        "",
    ]
    for name in alignment_probe.__all__:
        if name.startswith("__"):
            continue
        obj = getattr(api, name, None)
        if obj is None or not inspect.getdoc(obj):
            log.warning(f"ap.{name} has no docstring: the API reference needs one")
            continue
        module = getattr(obj, "__module__", "alignment_probe.api")
        out += [
            f"::: {module}.{getattr(obj, '__qualname__', name)}",
            "    options:",
            "      show_root_heading: true",
            f"      heading: ap.{name}",
            "      show_root_full_path: false",
            "      heading_level: 2",
            "",
        ]
    return "\n".join(out) + "\n"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _options_table(parser: argparse.ArgumentParser) -> list[str]:
    formatter = parser._get_formatter()
    rows = ["| option | default | what it does |", "|---|---|---|"]
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        metavar = f" {action.metavar or action.dest.upper()}" if action.option_strings and action.nargs != 0 else ""
        flags = ", ".join(f"`{s}{metavar}`" for s in action.option_strings) or f"`{action.dest}` (positional)"
        default = "" if action.default in (None, argparse.SUPPRESS, False) else f"`{action.default}`"
        if action.choices:
            default += (" — one of " if default else "one of ") + ", ".join(f"`{c}`" for c in action.choices)
        text = formatter._expand_help(action) if action.help else ""
        rows.append(f"| {flags} | {_cell(default)} | {_cell(text)} |")
    return rows


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser, str]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                out.append((name, sub, helps.get(name) or ""))
    return out


def cli_page() -> str:
    from alignment_probe.cli import build_parser

    parser = build_parser()
    out = [
        "# Command line: `alignment-probe`",
        "",
        "Generated from the command's own parser (`alignment_probe/cli/parser.py`, `build_parser`), so it lists every",
        "option with its default as the installed version has them. `python -m alignment_probe` is the same",
        "command. What the exit codes mean: [Errors](../errors/index.md).",
        "",
        "```text",
        parser.format_usage().strip(),
        "```",
        "",
    ]

    def walk(p: argparse.ArgumentParser, path: list[str], level: int) -> None:
        for name, sub, help_text in _subcommands(p):
            full = [*path, name]
            nonlocal out
            out += [f"{'#' * level} `{' '.join(full)}`", "", _cell(help_text) if help_text else "", ""]
            out += ["```text", sub.format_usage().strip(), "```", ""]
            if any(not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) for a in sub._actions):
                out.extend(_options_table(sub))
                out.append("")
            walk(sub, full, min(level + 1, 4))

    walk(parser, ["alignment-probe"], 2)
    return "\n".join(out) + "\n"


def error_classes() -> list[type[BaseException]]:
    from alignment_probe import errors

    # error classes defined outside errors.py
    for module in ("alignment_probe.vocab", "alignment_probe.world", "alignment_probe.launch"):
        importlib.import_module(module)
    seen: list[type[BaseException]] = []
    todo: list[type[BaseException]] = [errors.AlignmentProbeError]
    while todo:
        cls = todo.pop(0)
        if cls not in seen:
            seen.append(cls)
            todo.extend(sorted(cls.__subclasses__(), key=lambda c: c.__name__))
    return seen


def _raised_in(name: str) -> list[str]:
    pattern = re.compile(rf"raise {name}\(")
    hits = []
    for path in sorted((REPO / "alignment_probe").rglob("*.py")):
        if pattern.search(path.read_text(encoding="utf-8")):
            hits.append(".".join(path.relative_to(REPO).with_suffix("").parts))
    return hits


def _split_doc(cls: type) -> tuple[str, str]:
    doc = inspect.getdoc(cls) or ""
    meaning, _, todo = doc.partition("What to do:")
    todo = todo.strip()
    return meaning.strip(), todo[:1].upper() + todo[1:]


def error_pages() -> dict[str, str]:
    from alignment_probe import errors

    codes = {
        errors.EXIT_OK: "success",
        errors.EXIT_INTERNAL: "internal error (a bug): a traceback is printed; please report it",
        errors.EXIT_BAD_INPUT: "bad input: data, checkpoints, options or the run directory",
        errors.EXIT_NUMERICAL: "a model produced NaN or inf",
        errors.EXIT_PEER: "another process of the same run stopped (its message is repeated)",
        errors.EXIT_INTERRUPTED: "interrupted (Ctrl-C); 143 for SIGTERM: rerun the same command to resume",
    }
    pages: dict[str, str] = {}
    index = [
        "# Errors",
        "",
        "Everything cheap is checked before any compute, and every refusal is one of the classes below: a",
        "problem you can fix, with a message that names the file, line, field or option and the fix. From the",
        "command line each ends the run with its exit code and that message (no traceback unless `--debug`).",
        "",
        "| exit code | meaning |",
        "|---|---|",
        *(f"| {code} | {text} |" for code, text in codes.items()),
        "",
        "| error class | exit code | what it means |",
        "|---|---|---|",
    ]
    for cls in error_classes():
        meaning, todo = _split_doc(cls)
        if not meaning or not todo:
            log.warning(f"{cls.__module__}.{cls.__name__}: its docstring needs what it means and a 'What to do:' part")
        code = getattr(cls, "exit_code", None)
        code_text = "its rank's" if not isinstance(code, int) else str(code)
        parents = ", ".join(
            f"[{b.__name__}]({b.__name__}.md)" if issubclass(b, errors.AlignmentProbeError) else f"`{b.__name__}`"
            for b in cls.__bases__
        )
        raised = _raised_in(cls.__name__)
        lines = [
            f"# {cls.__name__}",
            "",
            f"`{cls.__module__}.{cls.__name__}` · exit code **{code_text}** · derives from {parents}",
            "",
            "## What it means",
            "",
            meaning,
            "",
            "## What to do",
            "",
            todo,
            "",
        ]
        subs = [c for c in error_classes() if cls in c.__bases__]
        if subs:
            lines += ["## Narrower errors", "", *(f"* [{c.__name__}]({c.__name__}.md)" for c in subs), ""]
        if raised:
            lines += ["## Raised in", "", ", ".join(f"`{m}`" for m in raised), ""]
        pages[f"errors/{cls.__name__}.md"] = "\n".join(lines)
        first = meaning.split("\n\n")[0].replace("\n", " ")
        index.append(f"| [{cls.__name__}]({cls.__name__}.md) | {code_text} | {_cell(first)} |")
    pages["errors/index.md"] = "\n".join(index) + "\n"
    return pages


# --------------------------------------------------------------------------------------------------
# MkDocs events
# --------------------------------------------------------------------------------------------------

_GENERATED: dict[str, str] = {}


def _nav_section(nav: list[Any], title: str) -> list[Any] | None:
    for entry in nav:
        if isinstance(entry, dict) and title in entry and isinstance(entry[title], list):
            return entry[title]  # type: ignore[no-any-return]
        if isinstance(entry, dict):
            for value in entry.values():
                if isinstance(value, list) and (found := _nav_section(value, title)) is not None:
                    return found
    return None


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    _GENERATED.clear()
    pages = method_pages()
    for page in pages:
        _GENERATED[f"method/{page.slug}.md"] = render_method_page(page)
    _GENERATED["reference/api.md"] = api_page()
    _GENERATED["reference/cli.md"] = cli_page()
    errors = error_pages()
    _GENERATED.update(errors)
    _GENERATED["changelog.md"] = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    # the nav's "Method" and "Errors" sections list what was generated, in order
    nav = config.nav or []
    method = _nav_section(nav, "Method")
    if method is not None:
        method[:0] = [{"Overview": "method/index.md"}] + [{p.title: f"method/{p.slug}.md"} for p in pages[1:]]
    errs = _nav_section(nav, "Errors")
    if errs is not None:
        errs[:] = ["errors/index.md", *(k for k in errors if k != "errors/index.md")]
    return config


@event_priority(100)  # before mkdocs-jupyter's on_files, which claims the notebooks
def on_files(files: Files, config: MkDocsConfig) -> Files:
    for path, content in _GENERATED.items():
        files.append(File.generated(config, path, content=content))
    for name in NOTEBOOKS:
        files.append(
            File(
                f"notebooks/{name}.ipynb",
                src_dir=str(REPO),
                dest_dir=config.site_dir,
                use_directory_urls=config.use_directory_urls,
            )
        )
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """``<!-- README: quickstart -->``: the README's first two commands, as the README has them;
    ``@VERSION@``: the package's version."""
    if "<!-- README: quickstart -->" in markdown:
        readme = (REPO / "README.md").read_text(encoding="utf-8")
        block = re.search(r"```bash\n.*?```", readme, re.S)
        if block is None:
            log.warning("README.md has no ```bash block for the quickstart")
        else:
            markdown = markdown.replace("<!-- README: quickstart -->", block.group(0))
    if "@VERSION@" in markdown:
        import alignment_probe

        markdown = markdown.replace("@VERSION@", alignment_probe.__version__)
    return markdown


_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):(?:`|<code>)~?([\w.]+?)(?:`|</code>)")


def on_page_content(html: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Sphinx roles in docstrings (``:class:`~alignment_probe.pair.Twins```) read as code: ``Twins``."""
    return _ROLE.sub(
        lambda m: f"<code>{m.group(1).rsplit('.', 1)[-1] if '~' in m.group(0) else m.group(1)}</code>", html
    )
