"""docs/architecture.md is the reference the code cites: the citations must resolve, and no
comment may point at a document that is not in the repository (the old design page) or at an
issue tracker entry (issue numbers mean nothing to the next maintainer)."""

from __future__ import annotations

import re
from pathlib import Path

import grimp
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


# --- the layout: packages named in docs/architecture.md, nothing loose, no cycles ----------
FOUNDATION = {"errors", "clock", "settings", "keys", "store", "logs"}


def shared_packages() -> list[str]:
    packages = sorted(
        path.name for path in (ROOT / "shared").iterdir() if (path / "__init__.py").is_file()
    )
    assert len(packages) > 10, "shared/ has no packages"
    return packages


@pytest.mark.parametrize("package", shared_packages())
def test_every_package_under_shared_is_named_in_architecture(package: str) -> None:
    assert f"`shared.{package}`" in ARCHITECTURE.read_text(), (
        f"shared/{package}/ is not described in docs/architecture.md §2"
    )


def test_no_module_sits_loose_in_shared_beyond_the_foundation() -> None:
    loose = {path.stem for path in (ROOT / "shared").glob("*.py")} - {"__init__"}
    assert loose, "no foundation modules found"
    assert loose <= FOUNDATION, f"modules loose in shared/: {sorted(loose - FOUNDATION)}"


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            module, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    imported = graph.find_modules_directly_imported_by(child)
                    work.append((child, iter(sorted(imported))))
                elif child in on_stack:
                    low[module] = min(low[module], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[module])
            if low[module] == index[module]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == module:
                        break
                if len(component) > 1 or module in graph.find_modules_directly_imported_by(module):
                    cycles.append(sorted(component))
    return cycles


def test_there_is_no_import_cycle_between_modules() -> None:
    """grimp reads every import statement, also those inside functions, so a cycle cannot
    hide behind a late import."""
    graph = grimp.build_graph("shared", "functions")
    assert len(graph.modules) > 100
    assert import_cycles(graph) == []


def test_the_cycle_finder_finds_cycles() -> None:
    graph = grimp.ImportGraph()
    for module in ("a", "a.x", "a.y", "a.z", "b"):
        graph.add_module(module)
    graph.add_import(importer="a.x", imported="a.y")
    graph.add_import(importer="a.y", imported="a.z")
    graph.add_import(importer="a.z", imported="a.x")
    graph.add_import(importer="b", imported="a.x")
    assert import_cycles(graph) == [["a.x", "a.y", "a.z"]]
