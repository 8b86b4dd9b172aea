"""The README and the hand-written docs pages stay short and true.

Checked without loading any model: the README's length; every relative link and image (and its ``#anchor``)
resolves on every page; no page but the generated ones cites a bare section number or ``algorithms.md``. On
the README and the hand-written pages of :data:`COMMAND_PAGES`: every Python block compiles and its
``copyguard`` imports resolve; every ``copyguard ...`` command line names a real subcommand and flags its
``--help`` shows (not hidden earlier names) and parses with the real parser (Beam options of ``curate``
included), its ``--set`` overrides validate against the job's config schema; every ``make`` target exists;
every ``-m copyguard...`` module exists; every ``--flag`` named in prose is a flag of some command; every
dotted ``copyguard.x.y`` name in inline code resolves.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.util
import io
import re
import shlex
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_README_LINES = 200
DOCS = ROOT / "docs"
# Written by `python -m benchmarks.render` from docs/_partials/ (checked through their generator, not here).
GENERATED = {"benchmarks.md", "results.md", "mitigation.md"}
# Pages whose command lines, code, prose flags and dotted names are checked (not install.md).
HAND_WRITTEN = ["jobs", "detect_generate", "training", "curation", "audit", "lab_model", "testing",
                "reliability"]  # fmt: skip
COMMAND_PAGES = [README, *(DOCS / f"{name}.md" for name in HAND_WRITTEN)]
LINK_PAGES = [README, *sorted(DOCS.glob("*.md"))]
CITATION_PAGES = [page for page in LINK_PAGES if page.name not in GENERATED]
SHELL_LANGS = {"bash", "sh", "shell", "console"}
# --set sections -> their config schema (module, name).
SCHEMAS = {
    "curate": ("copyguard.curation", "CurateConfig"),
    "train": ("copyguard.train", "TrainConfig"),
    "audit": ("copyguard.mitigation", "AuditConfig"),
    "detect": ("copyguard.mitigation", "DetectConfig"),
    "generate": ("copyguard.mitigation", "GenerateConfig"),
    "lab": ("copyguard.pipelines", "LabConfig"),
    "sample_data": ("copyguard.pipelines", "SampleDataConfig"),
}

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"`([^`\n]+)`")
MESSAGE = re.compile(r"copyguard(?: [\w-]+)?: ")  # `copyguard train: error: ...` quotes output, not a command
DOTTED = re.compile(r"copyguard(?:\.[A-Za-z_]\w*)+")


# ------------------------------------------------------------------------------------------------ parsing
def code_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced block."""
    return [(m.group(1).lower(), m.group(2)) for m in FENCE.finditer(text)]


def prose(text: str) -> str:
    """The text without its fenced blocks."""
    return FENCE.sub("", text)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = text.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown page (repeated headings get ``-1``, ``-2``... as on GitHub)."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for line in prose(path.read_text(encoding="utf-8")).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = github_slug(match.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def relative_links(path: Path) -> list[str]:
    """Link and image targets outside code that are not web addresses."""
    targets = LINK.findall(prose(path.read_text(encoding="utf-8")))
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def shell_lines(body: str) -> list[list[str]]:
    """The tokens of every command line of a shell block (continuations joined, comments dropped)."""
    joined = re.sub(r"\\\n", " ", body)
    lines = []
    for line in joined.splitlines():
        tokens = shlex.split(line, comments=True)
        if tokens and tokens[0] == "$":
            tokens = tokens[1:]
        if tokens:
            lines.append(tokens)
    return lines


def inline_commands(text: str) -> list[list[str]]:
    """Inline code spans of prose that are ``copyguard ...`` or ``make ...`` command lines (not output)."""
    out = []
    for span in INLINE_CODE.findall(prose(text)):
        if span.startswith(("copyguard ", "make ")) and not MESSAGE.match(span):
            with contextlib.suppress(ValueError):
                out.append(shlex.split(span))
    return out


# ------------------------------------------------------------------------------------------- the CLI
@cache
def cli_parser() -> argparse.ArgumentParser:
    from copyguard.pipelines.cli import build_parser

    return build_parser()


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def option_strings(parser: argparse.ArgumentParser, *, hidden: bool = False) -> set[str]:
    """The option names of ``parser``; without ``hidden``, only those ``--help`` shows (hidden ones are
    earlier names kept for a while, which the docs must not teach)."""
    shown = [a for a in parser._actions if hidden or a.help != argparse.SUPPRESS]
    return {s for action in shown for s in action.option_strings}


@cache
def beam_parser() -> argparse.ArgumentParser:
    """Every Beam pipeline option, built the way ``PipelineOptions.get_all_options`` builds its parser."""
    from apache_beam.options import pipeline_options as po

    parser = po._BeamArgumentParser(allow_abbrev=False, add_help=False)
    for cls in {str(c): c for c in po.PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)
    return parser


@cache
def make_targets() -> set[str]:
    rules = re.findall(r"^([\w.-]+(?: [\w.-]+)*)\s*:(?!=)", (ROOT / "Makefile").read_text(), re.MULTILINE)
    return {target for rule in rules for target in rule.split()}


def flag_name(token: str) -> str | None:
    return token.split("=", 1)[0] if token.startswith("-") and token not in {"-", "--"} else None


def check_flags(tokens: list[str]) -> list[str]:
    """Problems with ``copyguard [TOP-OPTIONS] COMMAND FLAGS...``: unknown command, unknown flags."""
    top = cli_parser()
    rest = tokens[1:]
    while rest and rest[0].startswith("-"):
        if flag_name(rest[0]) not in option_strings(top):
            return [f"unknown top-level option {rest[0]}"]
        rest = rest[1:]
    if not rest:
        return []
    command, args = rest[0], rest[1:]
    commands = subparsers(top)
    if command not in commands:
        return [f"unknown command {command!r} (known: {', '.join(sorted(commands))})"]
    sub = commands[command]
    known = option_strings(sub)
    extra_ok = bool(sub.get_default("accepts_extra"))
    problems = []
    for token in args:
        name = flag_name(token)
        if name is None or name in known:
            continue
        if extra_ok and name in option_strings(beam_parser()):
            continue
        if name in option_strings(sub, hidden=True):
            problems.append(
                f"copyguard {command}: {name} is a hidden, earlier name; use the one --help shows"
            )
        else:
            problems.append(f"copyguard {command} has no flag {name}")
    return problems


def check_parse(tokens: list[str]) -> list[str]:
    """Parse the whole line with the real parser (required arguments, choices, Beam values, ``--set``)."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args, extra = cli_parser().parse_known_args(tokens[1:])
            if extra and getattr(args, "accepts_extra", False):
                _, unknown = beam_parser().parse_known_args(extra)
                extra = unknown
    except SystemExit:
        message = stderr.getvalue().strip().splitlines()
        return [f"does not parse: {message[-1] if message else '(no message)'}"]
    if extra:
        return [f"unrecognized arguments {extra}"]
    overrides = getattr(args, "overrides", None)
    if not overrides:
        return []
    from copyguard.common.config import load_config
    from copyguard.common.errors import UsageError

    section = overrides[0].split(".", 1)[0]
    if section not in SCHEMAS:
        return [f"--set {overrides[0]}: no schema known for section {section!r} (add it to SCHEMAS)"]
    module, name = SCHEMAS[section]
    schema = getattr(importlib.import_module(module), name)
    try:
        load_config(schema, section, None, list(overrides))
    except UsageError as exc:
        return [f"--set {' '.join(overrides)}: {exc}"]
    return []


def check_module_flags(tokens: list[str]) -> list[str]:
    """``... -m copyguard.X ...``: the module exists; ``copyguard.train`` and ``copyguard.pipelines`` share
    the CLI's parser, so their arguments are checked as ``copyguard train ...`` and ``copyguard ...``."""
    problems = []
    for i, token in enumerate(tokens[:-1]):
        if token != "-m" or not tokens[i + 1].startswith("copyguard"):
            continue
        module = tokens[i + 1]
        if importlib.util.find_spec(module) is None:
            problems.append(f"no module {module}")
        elif module == "copyguard.train":
            problems += check_flags(["copyguard", "train", *tokens[i + 2 :]])
        elif module == "copyguard.pipelines":
            problems += check_flags(["copyguard", *tokens[i + 2 :]])
    return problems


def check_command(tokens: list[str], *, full: bool) -> list[str]:
    if tokens[0] == "copyguard":
        problems = check_flags(tokens)
        if full and not problems and not {"...", "-h", "--help", "--version"} & set(tokens):
            problems = check_parse(tokens)
        return problems
    if tokens[0] == "make":
        targets = [t for t in tokens[1:] if "=" not in t and not t.startswith("-")]
        return [f"no make target {t!r}" for t in targets if t not in make_targets()]
    return check_module_flags(tokens)


def section_citations(text: str) -> list[int]:
    """Line numbers citing a bare section (``§N``) or the internal ``algorithms.md`` instead of a paper."""
    return [n for n, line in enumerate(text.splitlines(), 1) if "§" in line or "algorithms.md" in line]


def resolve_dotted(name: str) -> Any:
    """Import the longest module prefix of ``name`` and get the rest as attributes."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (module_name == exc.name or module_name.startswith(exc.name + ".")):
                raise  # the module exists but one of its own imports is missing
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(name)


# --------------------------------------------------------------------------------------------- the tests
def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < MAX_README_LINES, f"README.md has {len(lines)} lines; move details to docs/"


def test_readme_opens_with_what_copyguard_does_then_the_quickstart() -> None:
    headings = [ln for ln in README.read_text(encoding="utf-8").splitlines() if ln.startswith("## ")]
    expected = ["## Install", "## Quickstart: your data, your model", "## Two commands", "## Python API"]
    assert headings[:4] == expected


@pytest.mark.parametrize("page", LINK_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    problems = []
    for target in relative_links(page):
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            problems.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{target}: no heading with anchor #{anchor} in {dest.relative_to(ROOT)}")
    assert not problems, f"{page.relative_to(ROOT)}: " + "; ".join(problems)


@pytest.mark.parametrize("page", CITATION_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_bare_section_references(page: Path) -> None:
    lines = section_citations(page.read_text(encoding="utf-8"))
    assert not lines, f"{page.relative_to(ROOT)} lines {lines}: cite the paper (and equation), not a section"


@pytest.mark.parametrize("page", COMMAND_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_compile_and_their_copyguard_imports_resolve(page: Path) -> None:
    blocks = [
        body for lang, body in code_blocks(page.read_text(encoding="utf-8")) if lang in {"python", "py"}
    ]
    assert page != README or len(blocks) >= 3, "the README's Python API section has three snippets"
    for body in blocks:
        tree = ast.parse(compile(body, f"{page.name} block", "exec", ast.PyCF_ONLY_AST))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("copyguard"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{page.name}: {node.module} has no {alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("copyguard"):
                        importlib.import_module(alias.name)


@pytest.mark.parametrize("page", COMMAND_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_command_lines_are_real(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    lines = [
        tokens for lang, body in code_blocks(text) if lang in SHELL_LANGS for tokens in shell_lines(body)
    ]
    problems = [f"`{shlex.join(t)}`: {p}" for t in lines for p in check_command(t, full=True)]
    problems += [
        f"`{shlex.join(t)}`: {p}" for t in inline_commands(text) for p in check_command(t, full=False)
    ]
    assert not problems, f"{page.relative_to(ROOT)}:\n" + "\n".join(problems)
    if page == README:  # the quickstart's three jobs are all there, as full command lines
        used = {t[1] for t in lines if t[0] == "copyguard" and len(t) > 1}
        assert {"curate", "train", "audit"} <= used


@pytest.mark.parametrize("page", COMMAND_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_flags_named_in_prose_are_shown_by_some_command(page: Path) -> None:
    top = cli_parser()
    visible = option_strings(top).union(*(option_strings(sub) for sub in subparsers(top).values()))
    spans = INLINE_CODE.findall(prose(page.read_text(encoding="utf-8")))
    flags = {flag_name(span.split()[0]) for span in spans if span.startswith("--")}
    unknown = sorted(f for f in flags if f and f not in visible and f not in option_strings(beam_parser()))
    assert not unknown, f"{page.relative_to(ROOT)}: no copyguard command shows {unknown} in its --help"


@pytest.mark.parametrize("page", COMMAND_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dotted_copyguard_names_in_inline_code_resolve(page: Path) -> None:
    names = {
        m.group(0)
        for span in INLINE_CODE.findall(prose(page.read_text(encoding="utf-8")))
        for m in DOTTED.finditer(span)
    }
    missing = []
    for name in sorted(names):
        try:
            resolve_dotted(name)
        except (ImportError, AttributeError) as exc:
            missing.append(f"{name} ({exc})")
    assert not missing, f"{page.relative_to(ROOT)}: " + "; ".join(missing)


# ------------------------------------------------------------------------------- the checks can fail
def test_the_checks_catch_a_wrong_flag_command_set_key_target_and_citation() -> None:
    wrong = [
        "copyguard curate --input 'a/*.tar' --output o --nope 1",
        "copyguard curate --input a --output o --direct_num_workers abc",
        "copyguard cruate --input a",
        "copyguard train --model m --input d --output o --set train.nope=1",
        "copyguard audit --model m --index i --prompts p",  # no --output
    ]
    for line in wrong:
        assert check_command(shlex.split(line), full=True), line
    assert check_command(shlex.split("make demoo"), full=False)
    assert check_command(shlex.split("accelerate launch -m copyguard.train --modle m"), full=False)
    ok = "copyguard curate --input 'a/*.tar' --output o --direct_running_mode multi_processing"
    assert not check_command(shlex.split(ok), full=True)
    for name, sub in subparsers(cli_parser()).items():  # an earlier name (e.g. --out) parses but is refused
        for flag in sorted(option_strings(sub, hidden=True) - option_strings(sub)):
            assert check_flags(["copyguard", name, flag, "x"]), f"{name} {flag}"
    text = "Run `copyguard detect --calibrate-on x`; it prints `copyguard train: error: bad`.\n"
    assert inline_commands(text) == [["copyguard", "detect", "--calibrate-on", "x"]]  # the message is skipped
    assert section_citations("Wen et al., ICLR 2024, Eq. 4\nsee §5\nas in algorithms.md") == [2, 3]


def test_the_link_check_sees_a_broken_link_and_anchor(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [gone](missing.md) [bad](#nowhere)\n```\n[in code](x.md)\n```\n")
    assert relative_links(page) == ["#title", "missing.md", "#nowhere"]
    assert anchors(page) == {"title"}
    assert github_slug("The sample data: `copyguard sample-data`") == "the-sample-data-copyguard-sample-data"
