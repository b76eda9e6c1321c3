"""docs/architecture.md is the reference the code cites: the citations must resolve, and no
comment may point at a document that is not in the repository (the old design page) or at an
issue tracker entry (issue numbers mean nothing to the next maintainer)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARCHITECTURE = ROOT / "docs" / "architecture.md"
SOURCE_SUFFIXES = {".py", ".lua", ".yaml", ".yml", ".toml", ".txt", ".md"}

FORBIDDEN = {
    "the design page": re.compile(r"\bDESIGN\b"),
    "an issue number": re.compile(r"(?i)\bissues?\s*(?:#|no\.?\s*)?\d+|\bGH-\d+|(?<![\w&/])#\d+\b"),
}
CITATION = re.compile(r"docs/architecture\.md ((?:§\d+(?:, | and |/)?)+)")


def source_files() -> list[Path]:
    files = [
        path
        for top in ("shared", "functions")
        for path in sorted((ROOT / top).rglob("*"))
        if path.is_file() and path.suffix in SOURCE_SUFFIXES and "__pycache__" not in path.parts
    ]
    assert len(files) > 50, "the source tree was not found"
    return files


def section_numbers() -> set[int]:
    return {int(n) for n in re.findall(r"^## (\d+)\. ", ARCHITECTURE.read_text(), re.M)}


@pytest.mark.parametrize("what", sorted(FORBIDDEN))
def test_no_comment_cites_the_design_page_or_an_issue(what: str) -> None:
    pattern = FORBIDDEN[what]
    hits = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in source_files()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == [], f"{what} cited in code:\n" + "\n".join(hits)


@pytest.mark.parametrize(
    ("line", "what"),
    [
        ("# see DESIGN §3", "the design page"),
        ('"""Runs (issue 6 §1)."""', "an issue number"),
        ("-- fixed in issues 12", "an issue number"),
        ("# (#42)", "an issue number"),
        ("# GH-7", "an issue number"),
    ],
)
def test_the_patterns_catch_citations(line: str, what: str) -> None:
    assert FORBIDDEN[what].search(line)


@pytest.mark.parametrize(
    "line", ["local n = #KEYS", "iam_issuer = text('IAM_ISSUER')", "issue_token(sub)"]
)
def test_the_patterns_spare_ordinary_code(line: str) -> None:
    assert not any(pattern.search(line) for pattern in FORBIDDEN.values())


def test_every_cited_section_exists() -> None:
    sections = section_numbers()
    assert sections, "docs/architecture.md has no numbered sections"
    cited: dict[int, list[str]] = {}
    for path in source_files():
        for match in CITATION.finditer(path.read_text(encoding="utf-8")):
            for number in re.findall(r"§(\d+)", match.group(1)):
                cited.setdefault(int(number), []).append(str(path.relative_to(ROOT)))
    assert cited, "no comment cites docs/architecture.md"
    missing = {n: files for n, files in cited.items() if n not in sections}
    assert missing == {}, f"cited sections missing from docs/architecture.md: {missing}"


def test_sections_are_numbered_in_order() -> None:
    numbers = [int(n) for n in re.findall(r"^## (\d+)\. ", ARCHITECTURE.read_text(), re.M)]
    assert numbers == list(range(1, len(numbers) + 1))
