"""The docs cannot rot quietly: their links resolve, the make targets they name exist, and
`make help` lists every target the Makefile declares phony."""

from __future__ import annotations

import re
import subprocess
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MAKEFILE = ROOT / "Makefile"

FENCE = re.compile(r"^(```|~~~)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"`[^`\n]+`")
MAKE_CALL = re.compile(r"\bmake(?:\s+(?:-\S+|\w+=\S*))*\s+([A-Za-z][\w.-]*)")  # flags, VAR=x, TARGET
RULE = re.compile(r"^([^\s:=#][^:=]*?)\s*:(?!=)")


def split_code(text: str) -> tuple[str, str]:
    """(prose, code): the text outside fenced blocks and code spans, and what is inside them."""
    prose, code, fenced = [], [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
        elif fenced:
            code.append(line)
        else:
            code.extend(CODE_SPAN.findall(line))
            prose.append(CODE_SPAN.sub("", line))
    return "\n".join(prose), "\n".join(code)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text, lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    kept = "".join(c for c in text.lower()
                   if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, with GitHub's -1, -2 suffixes for repeats."""
    found: set[str] = set()
    fenced = False
    for line in path.read_text().splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
        elif not fenced and (match := HEADING.match(line)):
            base = anchor = slug(match.group(1))
            repeat = 0
            while anchor in found:
                repeat += 1
                anchor = f"{base}-{repeat}"
            found.add(anchor)
    return found


def broken_links(doc: Path) -> list[str]:
    """The relative links of one page whose file, or heading, does not exist."""
    prose, _ = split_code(doc.read_text())
    broken = []
    for target in LINK.findall(prose):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path_part, _, anchor = target.partition("#")
        path = (doc.parent / path_part).resolve() if path_part else doc
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (path.suffix != ".md" or anchor not in anchors(path)):
            broken.append(f"{target}: no heading with that anchor")
    return broken


def mentioned_targets(doc: Path) -> set[str]:
    """The targets of every `make ...` written as code (a span or a fenced block) in one page."""
    _, code = split_code(doc.read_text())
    return set(MAKE_CALL.findall(code))


def logical_lines(text: str) -> list[str]:
    """The Makefile's lines with backslash continuations joined."""
    return text.replace("\\\n", " ").splitlines()


def rule_targets() -> set[str]:
    """Every target that has a rule in the Makefile (recipe lines and variables excluded)."""
    targets = set()
    for line in logical_lines(MAKEFILE.read_text()):
        if line.startswith("\t") or line.startswith("export ") or line.startswith("."):
            continue
        if match := RULE.match(line):
            targets.update(match.group(1).split())
    return targets


def phony_targets() -> set[str]:
    declared = set()
    for line in logical_lines(MAKEFILE.read_text()):
        if line.startswith(".PHONY:"):
            declared.update(line.removeprefix(".PHONY:").split())
    return declared


def test_the_docs_are_found() -> None:
    """The checks below read these pages; an empty list would make them pass vacuously."""
    names = {doc.name for doc in DOCS}
    assert {"README.md", "requests.md", "configuration.md", "operations.md", "performance.md"} <= names


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.name)
def test_every_relative_link_resolves(doc: Path) -> None:
    assert broken_links(doc) == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.name)
def test_every_make_target_named_exists(doc: Path) -> None:
    missing = mentioned_targets(doc) - rule_targets()
    assert not missing, f"{doc.name} names make targets the Makefile lacks: {sorted(missing)}"


def test_every_phony_target_has_a_rule() -> None:
    phony = phony_targets()
    assert phony, "no .PHONY line found in the Makefile"
    assert phony - rule_targets() == set()


def test_make_help_lists_every_phony_target() -> None:
    shown = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True,
                           check=True, timeout=60).stdout
    listed = set(re.findall(r"\bmake ([\w.-]+)", shown))
    assert phony_targets() - listed == set()


def test_the_parsers_see_what_they_should() -> None:
    """The helpers themselves, on small known inputs: a check that finds nothing proves nothing."""
    assert slug("Rolling versions forward and back: `tsctl`") == "rolling-versions-forward-and-back-tsctl"
    assert slug("Walk-through (real output, `make serve` on this repository)") == \
        "walk-through-real-output-make-serve-on-this-repository"
    assert slug("Größe & Maße") == "größe--maße"
    prose, code = split_code("see [a](b.md) and `make bench MODEL=x`\n```bash\nmake -s help\n[c](d)\n```\n")
    assert LINK.findall(prose) == ["b.md"]
    assert "make -s help" in code and "[c](d)" not in prose
    assert set(MAKE_CALL.findall("make archive / make models\nmake -s MODEL=x bench-check")) == \
        {"archive", "models", "bench-check"}
    assert {"serve", "test", "install", "install-dev", "test-e2e"} <= rule_targets()
    assert "PY" not in rule_targets() and "PATH" not in rule_targets()
