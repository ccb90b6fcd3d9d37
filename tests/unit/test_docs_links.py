"""The documentation's links: every relative link and picture points to a file of the repository, every
#anchor to a heading of its target (GitHub's slugs), external links are well-formed, the README stays a
front page, and the help pages (what the frontend shows, served from web/) link only to what ComfyUI serves.

Pure: reads Markdown files only (no ComfyUI, no network).
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
README_MAX_LINES = 250


def doc_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "COMPATIBILITY.md", ROOT / "tests" / "README.md"]
    for folder in ("docs", "bench"):
        files += sorted((ROOT / folder).glob("*.md"))
    return [f for f in files + help_pages() if f.is_file()]


HELP_DOCS = ROOT / "web" / "docs"


def help_pages() -> list[Path]:
    """The nodes' help pages, web/docs/<node id>/<locale>.md."""
    return sorted(HELP_DOCS.glob("*/*.md"))


def link_base(source: Path) -> Path:
    """The folder a file's relative links resolve against: the frontends resolve a help page's links against
    docs/ (where its pictures are), not against the page's own <node id>/ folder."""
    return HELP_DOCS if source.parent.parent == HELP_DOCS else source.parent


FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target "title") and ![alt](target); the text may hold one level of brackets.
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
HTML_URL = re.compile(r"<(?:img|a|source)\b[^>]*?\b(?:src|href)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
HTML_ANCHOR = re.compile(r"<[a-z]+\b[^>]*?\b(?:id|name)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(text: str):
    """(line number, line) outside fenced code blocks, with inline code spans blanked."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, CODE_SPAN.sub("code", line)


def links(path: Path) -> list[tuple[int, str]]:
    found = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        for pattern in (INLINE_LINK, REFERENCE_DEF, HTML_URL):
            found += [(number, m.group(1).strip("<>")) for m in pattern.finditer(line)]
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the text as shown, lower-cased; letters, digits, marks, '_', '-' and
    spaces kept, every space a '-' (github-slugger)."""
    text = re.sub(r"!?\[((?:[^\[\]]|\[[^\]]*\])*)\]\([^)]*\)", r"\1", heading)  # a link shows its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LMN")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    seen: dict[str, int] = {}
    result = set()
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        result.update(HTML_ANCHOR.findall(line))
        heading = HEADING.match(line)
        if heading:
            base = slug(heading.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            result.add(base if count == 0 else f"{base}-{count}")
    return result


def check_link(source: Path, target: str) -> str | None:
    """What is wrong with one link of `source`, or None."""
    parts = urlsplit(target)
    if parts.scheme in ("http", "https"):
        if not parts.netloc or "." not in parts.netloc or any(c.isspace() for c in target):
            return f"malformed URL {target!r}"
        return None
    if parts.scheme == "mailto":
        return None if "@" in parts.path else f"malformed address {target!r}"
    if parts.scheme or parts.netloc:
        return f"unexpected scheme in {target!r}"
    path = unquote(parts.path)
    if path.startswith("/"):
        return f"absolute path {target!r}: link relative to the file"
    resolved = (link_base(source) / path).resolve() if path else source
    if not resolved.is_relative_to(ROOT):
        return f"{target!r} leaves the repository"
    if not resolved.exists():
        return f"{target!r}: no such file {resolved.relative_to(ROOT)}"
    if parts.fragment:
        if resolved.suffix != ".md":
            return f"{target!r}: an anchor into a file that is not Markdown"
        if unquote(parts.fragment) not in anchors(resolved):
            return f"{target!r}: no heading #{parts.fragment} in {resolved.relative_to(ROOT)}"
    return None


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_and_picture_resolves(doc):
    problems = [f"line {n}: {why}" for n, target in links(doc) if (why := check_link(doc, target))]
    assert not problems, f"{doc.relative_to(ROOT)}:\n" + "\n".join(problems)


@pytest.mark.parametrize("doc", help_pages(), ids=lambda p: p.parent.name)
def test_help_pages_link_only_to_what_comfyui_serves(doc):
    """ComfyUI serves web/ at /extensions/<pack>/; the frontend shows a help page there, so a link out of
    web/ (to the README or docs/) would not open."""
    web = ROOT / "web"
    outside = [target for _, target in links(doc)
               if not urlsplit(target).scheme and urlsplit(target).path
               and not (link_base(doc) / unquote(urlsplit(target).path)).resolve().is_relative_to(web)]
    assert not outside, f"{doc.name} links out of web/: {outside}"


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}): move detail to docs/"


def test_the_documentation_is_found():
    names = {str(p.relative_to(ROOT)) for p in doc_files()}
    assert {"README.md", "tests/README.md", "bench/README.md", "web/docs/PnP_Sampler/en.md"} <= names
    assert any(name.startswith("docs/") for name in names)


@pytest.mark.parametrize(("heading", "anchor"), [
    ("Real image → target prompt (`pnp_real_image`)", "real-image--target-prompt-pnp_real_image"),
    ("PnP + feature PCA (`pnp_feature_pca`)", "pnp--feature-pca-pnp_feature_pca"),
    ("Weakening the background (a user's SAM scheme)", "weakening-the-background-a-users-sam-scheme"),
    ("SD 1.x/2.x and SDXL layers", "sd-1x2x-and-sdxl-layers"),
    ("How this differs from ComfyUI's own \"inversion\"", "how-this-differs-from-comfyuis-own-inversion"),
    ("Seeing what a layer carries: PnP Feature PCA", "seeing-what-a-layer-carries-pnp-feature-pca"),
    ("Choosing τ_f", "choosing-τ_f"),
    ("[Linked](x.md) heading", "linked-heading"),
])
def test_slugs_are_githubs(heading, anchor):
    assert slug(heading) == anchor


def test_checker_catches_broken_links():
    page = ROOT / "docs" / "guide.md"
    assert check_link(page, "how-it-works.md") is None
    assert check_link(page, "#memory-modes") is None
    assert "no such file" in check_link(page, "no-such-page.md")
    assert "no heading" in check_link(page, "how-it-works.md#no-such-heading")
    assert "no heading" in check_link(page, "#no-such-heading")
    assert "leaves the repository" in check_link(page, "../../outside.md")
    assert "malformed" in check_link(page, "https://")
    assert check_link(page, "https://arxiv.org/abs/2211.12572") is None
