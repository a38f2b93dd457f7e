"""The built docs site loads nothing from outside itself: it reads the same offline.

It checks the site ``python3 dev.py docs`` builds into docs/_build/html (CI builds it
before the tests). When that site is missing or older than its sources, the test builds
it again into a temporary folder, if Sphinx is installed, and fails, saying how to build
it, if not: it never passes without having looked at a site.

Links to other sites (``<a href="https://...">``) are fine: they are followed only when
the reader clicks. Scripts, styles, images, fonts and frames are not: offline, or under a
strict Content-Security-Policy, a page that loads them from a CDN breaks.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BUILT = DOCS / "_build" / "html"

# What a page loads by itself: (tag, attribute). <a href> is a link, not a load.
LOADS = {
    ("script", "src"),
    ("link", "href"),
    ("img", "src"),
    ("img", "srcset"),
    ("source", "src"),
    ("source", "srcset"),
    ("iframe", "src"),
    ("embed", "src"),
    ("object", "data"),
    ("video", "src"),
    ("video", "poster"),
    ("audio", "src"),
    ("input", "src"),
}
# <link rel=...> values that do not load anything.
LINK_RELATIONS_THAT_DO_NOT_LOAD = {
    "canonical",
    "alternate",
    "author",
    "license",
    "help",
    "search",
    "index",
    "next",
    "prev",
}
OUTSIDE = re.compile(r"^\s*(?:https?:)?//", re.IGNORECASE)
CSS_OUTSIDE = re.compile(r"""(?:url\(\s*["']?|@import\s+["']?)\s*(?:https?:)?//""", re.IGNORECASE)
SCRIPT_OUTSIDE = re.compile(
    r"""(?:\bimport\b[^;]*?|\bimport\s*\(\s*|\bfetch\s*\(\s*)["'](?:https?:)?//""", re.IGNORECASE
)


class _Loads(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.outside: list[str] = []
        self.scripts: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        relations = set(values.get("rel", "").lower().split())
        for name, value in values.items():
            if (tag, name) not in LOADS:
                continue
            if tag == "link" and relations and relations <= LINK_RELATIONS_THAT_DO_NOT_LOAD:
                continue
            urls = [part.split()[0] for part in value.split(",") if part.strip()] if name == "srcset" else [value]
            self.outside += [f"<{tag} {name}={url!r}>" for url in urls if OUTSIDE.match(url)]
        if "style" in values and CSS_OUTSIDE.search(values["style"]):
            self.outside.append(f"<{tag} style={values['style']!r}>")
        if tag in ("script", "style"):
            self._in = tag
        if tag == "script" and "src" in values:
            self.scripts.append(values["src"])

    def handle_endtag(self, tag: str) -> None:
        if tag == self._in:
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "style" and CSS_OUTSIDE.search(data):
            self.outside.append(f"<style> {CSS_OUTSIDE.search(data).group(0)}...")  # type: ignore[union-attr]
        if self._in == "script" and SCRIPT_OUTSIDE.search(data):
            self.outside.append(f"<script> {SCRIPT_OUTSIDE.search(data).group(0)}...")  # type: ignore[union-attr]


def outside_loads(html: str) -> list[str]:
    """What a page would load from outside the site."""
    parser = _Loads()
    parser.feed(html)
    return parser.outside


def local_scripts(html: str) -> list[str]:
    parser = _Loads()
    parser.feed(html)
    return [src for src in parser.scripts if not OUTSIDE.match(src)]


def _sources_newest() -> float:
    sources = [path for path in DOCS.rglob("*") if path.is_file() and "_build" not in path.parts]
    sources += [*ROOT.glob("otpy/**/*.py"), *ROOT.glob("sessions/**/*.py")]
    return max(path.stat().st_mtime for path in sources)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built site: docs/_build/html if it is up to date, else a fresh build."""
    index = BUILT / "index.html"
    if index.exists() and index.stat().st_mtime >= _sources_newest():
        return BUILT
    if shutil.which("sphinx-build", path=str(Path(sys.executable).parent)) is None:
        pytest.fail(f"no up-to-date docs site in {BUILT}: build it first with `python3 dev.py docs`")
    out = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, str(DOCS / "vendor_mermaid.py")], check=True, cwd=ROOT)
    subprocess.run(
        [str(Path(sys.executable).parent / "sphinx-build"), "-q", "-b", "html", str(DOCS), str(out)],
        check=True,
        cwd=ROOT,
        timeout=600,
    )
    return out


# Building the site, when it is not up to date, takes minutes on a loaded machine.
@pytest.mark.timeout(900)
def test_no_page_loads_anything_from_outside_the_site(site: Path) -> None:
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 20  # the whole site, not an empty folder
    found = {}
    for page in pages:
        outside = outside_loads(page.read_text(encoding="utf-8"))
        if outside:
            found[str(page.relative_to(site))] = outside
    assert not found, f"pages that load from outside the site: {found}"
    styles = list(site.rglob("*.css"))
    assert styles
    assert [str(css) for css in styles if CSS_OUTSIDE.search(css.read_text(encoding="utf-8"))] == []


@pytest.mark.timeout(900)
def test_every_script_a_page_loads_is_in_the_site(site: Path) -> None:
    """Mermaid included: the pages with diagrams load the site's own copy, which is there."""
    diagrams = 0
    for page in sorted(site.rglob("*.html")):
        html = page.read_text(encoding="utf-8")
        for src in local_scripts(html):
            assert (page.parent / src.split("?")[0]).exists(), f"{page.name} loads {src}, which the site lacks"
        if 'class="mermaid' in html and "<pre" in html:
            diagrams += 1
            assert any(src.split("?")[0].endswith("_static/mermaid/mermaid.min.js") for src in local_scripts(html))
    assert diagrams >= 5  # the pages with diagrams were seen


def test_the_check_sees_what_loads_from_outside() -> None:
    """Each kind of outside load is caught; links and local files are not."""
    caught = [
        '<script src="https://cdn.jsdelivr.net/npm/mermaid/dist/mermaid.esm.min.mjs"></script>',
        '<link rel="stylesheet" href="//fonts.googleapis.com/css?family=Roboto">',
        '<link rel="preload" href="https://example.org/font.woff2" as="font">',
        '<img src="http://example.org/logo.png">',
        '<img srcset="a.png 1x, https://example.org/b.png 2x">',
        '<style>@import "https://example.org/x.css";</style>',
        "<div style=\"background: url('https://example.org/bg.png')\"></div>",
        '<script type="module">import mermaid from "https://cdn.jsdelivr.net/npm/mermaid@11";</script>',
        "<iframe src='https://example.org/'></iframe>",
    ]
    for html in caught:
        assert outside_loads(html), html
    fine = [
        '<a href="https://trio.readthedocs.io">trio</a>',
        '<script src="_static/mermaid/mermaid.min.js"></script>',
        '<link rel="stylesheet" href="_static/styles/furo.css">',
        '<link rel="canonical" href="https://example.org/page.html">',
        '<script type="module">import mermaid from "data:text/javascript,export default globalThis.mermaid;";</script>',
        '<img src="performance-ratios.png">',
    ]
    for html in fine:
        assert outside_loads(html) == [], html


CODE_WIDTH = 88  # what the site's code box shows at a laptop's width without scrolling
FENCE = re.compile(r"^(`{3,})(\S*)[^\n]*\n(.*?)^\1[ \t]*$", re.MULTILINE | re.DOTALL)


def too_wide(markdown: str) -> list[str]:
    """The lines of a page's Python blocks that are wider than the code box."""
    return [
        line
        for fence in FENCE.finditer(markdown)
        if fence.group(2) == "python"
        for line in fence.group(3).splitlines()
        if len(line) > CODE_WIDTH
    ]


def test_python_examples_fit_the_code_box() -> None:
    """Every line of a page's Python examples is within 88 columns (ruff format's width)."""
    pages = [path for path in DOCS.rglob("*.md") if "_build" not in path.parts]
    assert len(pages) > 20
    wide = {str(path.relative_to(ROOT)): too_wide(path.read_text(encoding="utf-8")) for path in pages}
    assert {page: lines for page, lines in wide.items() if lines} == {}


def test_the_width_check_sees_a_wide_line() -> None:
    page = "text\n\n```python\nx = 1\n" + "y = " + "1" * 85 + "\n```\n\n```text\n" + "z" * 120 + "\n```\n"
    assert too_wide(page) == ["y = " + "1" * 85]
    assert too_wide(page.replace("1" * 85, "1" * 84)) == []
