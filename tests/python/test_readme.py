"""The Python examples of the README and of docs/*.md run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_readme_has_python_examples() -> None:
    assert len(python_blocks(README)) >= 1


def test_readme_examples_run(capsys) -> None:
    for block in python_blocks(README):
        exec(compile(block, str(README), "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "MemoryStore(" in out and "book-1" in out


@pytest.mark.parametrize("doc", [d for d in DOCS if python_blocks(d)], ids=lambda d: d.name)
def test_docs_examples_run(doc: Path) -> None:
    for block in python_blocks(doc):
        exec(compile(block, str(doc), "exec"), {"__name__": "docs"})


def test_readme_links_resolve() -> None:
    """Every relative link of the README and the docs names a file that exists: what moved out of
    the README stays reachable."""
    for page in [README, *DOCS]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
