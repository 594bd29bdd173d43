"""The documentation's relative links resolve, and every page in docs/ is reachable from the README."""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
# [text](target) and [text](target "title"); images too. Reference-style links are not used here.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~)")


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def links(path: Path) -> list[tuple[int, str]]:
    """Link targets outside fenced code blocks, with their line numbers."""
    found, fenced = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            found += [(number, target) for target in LINK.findall(line)]
    return found


def is_external(target: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I))  # http:, https:, mailto:…


def test_markdown_files_found():
    names = {p.relative_to(ROOT).as_posix() for p in markdown_files()}
    assert {"README.md", "docs/platform.md", "docs/security.md", "docs/adr/README.md"} <= names


def test_every_relative_link_resolves():
    broken = []
    for path in markdown_files():
        for number, target in links(path):
            if is_external(target):
                continue
            file_part, _, anchor = target.partition("#")
            where = f"{path.relative_to(ROOT)}:{number}: {target}"
            if anchor:
                broken.append(f"{where} (links carry no anchors: headings move, files stay)")
                continue
            resolved = (path.parent / unquote(file_part)).resolve()
            if not resolved.exists():
                broken.append(f"{where} (no such file)")
            elif not resolved.is_relative_to(ROOT):
                broken.append(f"{where} (outside the repository)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    readme = ROOT / "README.md"
    linked = {(readme.parent / unquote(t.partition("#")[0])).resolve()
              for _, t in links(readme) if not is_external(t)}
    pages = sorted(DOCS.glob("*.md"))
    assert pages, "docs/ has no pages"
    missing = [p.relative_to(ROOT).as_posix() for p in pages if p.resolve() not in linked]
    assert not missing, f"docs pages not linked from README.md: {missing}"


def test_the_link_checker_finds_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[ok](page.md) [gone](missing.md)\n```\n[in code](nowhere.md)\n```\n", encoding="utf-8")
    targets = [t for _, t in links(page)]
    assert targets == ["page.md", "missing.md"]
    assert not (tmp_path / "missing.md").exists()
