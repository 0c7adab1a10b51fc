"""Documentation: every relative link resolves, the README stays short, each docs page says what it is for."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ["1-SFT.ipynb", "2-RM Training.ipynb", "3-RLHF.ipynb"]
DOCS = sorted((ROOT / "docs").glob("*.md"))
README_MAX_WORDS = 1800

CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)  # fenced blocks and inline code hold no links
MARKDOWN_TARGET = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'][^\"']*[\"'])?\s*\)")  # [text](target), ![alt](target)
HTML_TARGET = re.compile(r"\b(?:src|href)\s*=\s*[\"']([^\"']+)[\"']")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # http:, https:, mailto:, attachment:, ...


def link_targets(markdown: str) -> list[str]:
    """The link and image targets in a markdown text, outside code."""
    text = CODE.sub("", markdown)
    return MARKDOWN_TARGET.findall(text) + HTML_TARGET.findall(text)


def broken_links(markdown: str, base: Path) -> list[str]:
    """The relative targets in `markdown` that name no file or folder of the repository, seen from `base`."""
    broken = []
    for target in link_targets(markdown):
        if SCHEME.match(target) or target.startswith("#"):
            continue
        path = unquote(target.split("#", 1)[0].split("?", 1)[0])
        resolved = (ROOT / path.lstrip("/")) if path.startswith("/") else (base / path)
        resolved = resolved.resolve()
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            broken.append(target)
    return broken


def notebook_markdown(name: str) -> str:
    """The markdown cells of a notebook, joined."""
    cells = json.loads((ROOT / name).read_text(encoding="utf-8"))["cells"]
    sources = [c["source"] for c in cells if c["cell_type"] == "markdown"]
    return "\n\n".join(s if isinstance(s, str) else "".join(s) for s in sources)


def documents() -> list[tuple[str, str, Path]]:
    """Every document that links: (name, markdown, the folder its links start from)."""
    pages = [ROOT / "README.md", *DOCS]
    docs = [(p.relative_to(ROOT).as_posix(), p.read_text(encoding="utf-8"), p.parent) for p in pages]
    return docs + [(name, notebook_markdown(name), ROOT) for name in NOTEBOOKS]


@pytest.mark.parametrize("name, markdown, base", [pytest.param(*d, id=d[0]) for d in documents()])
def test_every_relative_link_resolves(name: str, markdown: str, base: Path) -> None:
    """Each relative link and image names an existing file or folder."""
    assert link_targets(markdown), f"{name}: no links found; is the pattern right?"
    assert broken_links(markdown, base) == [], name


def test_the_checker_reports_a_missing_file() -> None:
    """A link to a missing file is reported; links that resolve, and the ones to skip, are not."""
    markdown = (
        "See [the README](../README.md#run-locally), ![a plot](../images/rlhf_pipeline.png), "
        "[notebook 2](../2-RM%20Training.ipynb), [a folder](../benchmarks/), [web](https://example.org/x.md), "
        '[mail](mailto:a@b.c), [here](#top), ![cell](attachment:x.png), <img src="../images/nowhere.png">, '
        "`[code](ignored.md)` and [gone](missing-page.md#part)."
    )
    assert broken_links(markdown, ROOT / "docs") == ["missing-page.md#part", "../images/nowhere.png"]


def test_readme_is_short() -> None:
    """The README stays within its word budget; the details live in docs/."""
    words = len((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert words <= README_MAX_WORDS, f"README.md has {words} words; move details to docs/"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_each_docs_page_opens_by_saying_what_it_is_for(path: Path) -> None:
    """A docs page starts with its title and then a paragraph of prose, not straight into a heading or table."""
    blocks = [b.strip() for b in path.read_text(encoding="utf-8").split("\n\n") if b.strip()]
    assert blocks[0].startswith("# ") and "\n" not in blocks[0], f"{path.name}: the first line should be its title"
    opening = blocks[1]
    assert re.match(r"[A-Z]", opening) and opening.endswith("."), f"{path.name}: no opening paragraph: {opening[:80]}"
    assert len(opening.split()) >= 10, f"{path.name}: the opening paragraph is too short to say what the page is for"


def test_there_are_docs_pages() -> None:
    """The docs folder exists and holds pages, so the checks above are not vacuous."""
    assert len(DOCS) >= 5, DOCS
