"""The shape of the package stays readable: files of a few hundred lines, short functions, and a
README layout map that names every module there is (and none that is gone)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nextchar"
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80
SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_files_and_functions_are_short(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    assert source.count("\n") <= MAX_FILE_LINES, f"{path.name}: split it by responsibility"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"


def _layout_map() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Layout", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```\n(.*?)```", section, flags=re.S)
    assert blocks, "README.md: the Layout section has no tree"
    return blocks[0]


def _entries(tree: str) -> dict[str, str]:
    """The map's entries under nextchar/ (lines indented two spaces), each with its description
    and continuation lines (indented further)."""
    entries: dict[str, str] = {}
    current = None
    for line in tree.splitlines():
        entry = re.match(r"^  (\S+)(.*)", line)
        if entry:
            current = entry.group(1)
            entries[current] = entry.group(2)
        elif current is not None and line.startswith("   "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


def test_the_readme_layout_names_every_module() -> None:
    entries = _entries(_layout_map())
    missing = []
    for path in SOURCES:
        relative = path.relative_to(PACKAGE)
        if path.name in ("__init__.py", "__main__.py"):
            continue
        if len(relative.parts) == 1:
            found = path.name in entries
        else:  # a module of a subpackage: named in the subpackage's entry
            described = entries.get(relative.parts[0] + "/", "")
            found = relative.parts[0] == "lecture" and "lecture/" in entries  # lecture/ is described whole
            found = found or re.search(rf"\b{re.escape(path.stem)}(\.py)?\b", described) is not None
        if not found:
            missing.append(str(relative))
    assert not missing, f"README.md's layout map does not name: {', '.join(missing)}"


def test_the_readme_layout_names_nothing_that_is_gone() -> None:
    entries = _entries(_layout_map())
    gone = [name for name in entries if not (PACKAGE / name).exists()]
    for package, described in entries.items():
        if package.endswith("/") and package != "lecture/":
            for module in re.findall(r"\b([a-z_]+)\.py\b", described):
                if not (PACKAGE / package / f"{module}.py").exists():
                    gone.append(f"{package}{module}.py")
    assert not gone, f"README.md's layout map names what is not there: {', '.join(gone)}"


def test_docs_name_no_absolute_path_of_a_machine() -> None:
    """Commands in the docs work from a checkout anywhere: paths are relative to the project."""
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"(?<![\w.])/(work|root|home|tmp|Users)/", line):
                found.append(f"{doc.name}:{number}")
    assert not found, f"absolute paths in the docs: {', '.join(found)}"
