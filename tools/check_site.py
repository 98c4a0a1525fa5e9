"""Check a built documentation site as a browser sees it: every internal link resolves.

``python tools/check_site.py [SITE]``

SITE (default ``site``) is the folder ``mkdocs build`` wrote. It is served over HTTP on
127.0.0.1 (a free port, for the length of the run), and every ``.html`` file under it is
fetched from that server, whether or not a link leads to it. On each page, every internal
link (the URL attributes of ``LINK_ATTRIBUTES``: ``a``'s ``href``, ``img``'s ``src`` and
``srcset``, ...; relative, root-relative or a fragment alone) must resolve: the target,
fetched over HTTP, answers 200, and a ``#fragment`` names an ``id`` (or an ``a``
element's ``name``) on the target page, if that is HTML. A folder without ``index.html``
is not found, as on a static host. Links with a scheme or a host of their own
(``https:``, ``mailto:``, ``javascript:``, ``//...``) are not followed. Each target is fetched once.

The site must also carry ``sitemap.xml`` (well-formed, a ``urlset``) and the search
plugin's ``search/search_index.json``, which must list every page (``404.html`` aside).

Each broken link is printed as ``page -> link (why)``; then one line of summary. Exit
status 1 if anything is broken, 2 if SITE is not a built site. Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import os
import sys
import threading
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, unquote, urldefrag, urljoin, urlsplit

#: The elements and the attributes of theirs that hold a URL, all checked.
LINK_ATTRIBUTES = {
    "a": ("href",),
    "area": ("href",),
    "link": ("href",),
    "script": ("src",),
    "img": ("src", "srcset"),
    "source": ("src", "srcset"),
    "iframe": ("src",),
    "embed": ("src",),
    "audio": ("src",),
    "video": ("src", "poster"),
    "track": ("src",),
}
#: The search plugin's index, relative to the site's top.
SEARCH_INDEX = "search/search_index.json"
SITEMAP = "sitemap.xml"
#: Pages that are not the site's own content: not in the search index.
NOT_INDEXED = {"404.html"}
#: Generous, for a loaded machine: these are loopback fetches of small files.
FETCH_TIMEOUT_S = 30.0


class _Page(HTMLParser):
    """The links and the fragment targets of one HTML document."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.anchors: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if (ident := values.get("id")) is not None:
            self.anchors.add(ident)
        if tag == "a" and (name := values.get("name")) is not None:
            self.anchors.add(name)
        for attribute in LINK_ATTRIBUTES.get(tag, ()):
            if (link := values.get(attribute)) is None:
                continue
            if attribute == "srcset":  # "a.png, b.png 2x": each candidate's URL
                self.links += [c.split()[0] for c in link.split(",") if c.strip()]
            else:
                self.links.append(link.strip())


def parse_html(text: str) -> tuple[list[str], set[str]]:
    """The links (in document order) and the anchors (ids and ``a`` names) of a page."""
    page = _Page()
    page.feed(text)
    page.close()
    return page.links, page.anchors


def is_internal(link: str) -> bool:
    """True for a link into the site: relative, root-relative or a fragment alone."""
    parts = urlsplit(link)
    return not parts.scheme and not parts.netloc


@dataclass(frozen=True, slots=True)
class Fetched:
    """What the server answered for one URL (fragment stripped)."""

    status: int
    #: Where the answer came from after redirects.
    url: str
    #: The anchors of an HTML answer; None for anything else.
    anchors: frozenset[str] | None
    #: The links of an HTML answer, as written.
    links: tuple[str, ...] = ()
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Broken:
    """One link that does not resolve, on the page (its site path) that holds it."""

    page: str
    link: str
    why: str

    def __str__(self) -> str:
        return f"{self.page} -> {self.link} ({self.why})"


@dataclass(slots=True)
class Report:
    """The outcome of a check: what was fetched and checked, and what is broken."""

    pages: int = 0
    links: int = 0
    fetches: int = 0
    broken: list[Broken] = field(default_factory=list)

    def summary(self) -> str:
        """One line: pages fetched, links checked, targets fetched, problems found."""
        return (
            f"check_site: {self.pages} pages fetched, {self.links} internal links checked "
            f"({self.fetches} URLs fetched), {len(self.broken)} broken"
        )


class _SiteHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files as a static host does: a folder without ``index.html`` is not found."""

    def list_directory(self, path: str | os.PathLike[str]) -> None:
        self.send_error(404, "No index.html in this folder")

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(root: Path) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1 (a free port) while the block runs; yield its base URL."""
    handler = functools.partial(_SiteHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    # A short poll, so that shutdown() at the end returns at once (the default is 0.5 s).
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="check_site-http", daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class Fetcher:
    """Fetches URLs from the served site, each once."""

    def __init__(self) -> None:
        self._cache: dict[str, Fetched] = {}

    @property
    def fetches(self) -> int:
        return len(self._cache)

    def get(self, url: str) -> Fetched:
        """The answer for ``url`` (its fragment ignored), from the cache after the first time."""
        url = urldefrag(url).url
        if (cached := self._cache.get(url)) is None:
            cached = self._cache[url] = self._fetch(url)
        return cached

    @staticmethod
    def _fetch(url: str) -> Fetched:
        try:
            with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as answer:
                body = answer.read()
                final = answer.geturl()
                html = answer.headers.get_content_type() == "text/html"
                charset = answer.headers.get_content_charset() or "utf-8"
                status = answer.status
        except urllib.error.HTTPError as error:
            error.close()  # it holds the answer, and its connection, open
            return Fetched(error.code, url, None, reason=f"HTTP {error.code}")
        if not html:
            return Fetched(status, final, None)
        links, anchors = parse_html(body.decode(charset, errors="replace"))
        return Fetched(status, final, frozenset(anchors), tuple(links))


def site_pages(root: Path) -> list[str]:
    """Every HTML page under ``root`` as its path from the site's top, in a stable order.

    A folder's ``index.html`` is named by the folder (``guide/pools/``, ``""`` for the
    home page), which is how the site links to it.
    """
    pages = []
    for path in sorted(root.rglob("*.html")):
        relative = path.relative_to(root).as_posix()
        if relative == "index.html":
            relative = ""
        elif relative.endswith("/index.html"):
            relative = relative.removesuffix("index.html")
        pages.append(relative)
    return pages


def site_path(base: str, url: str) -> str:
    """``url``'s path from the site's top (``base``), unquoted, for a report."""
    return unquote(url.removeprefix(base))


def check_link(fetcher: Fetcher, base: str, page_url: str, link: str) -> str | None:
    """Why ``link`` on the page at ``page_url`` does not resolve, or None if it does."""
    target_url, fragment = urldefrag(urljoin(page_url, link))
    target = fetcher.get(target_url)
    if target.status != 200:
        return target.reason or f"HTTP {target.status}"
    if fragment and target.anchors is not None and unquote(fragment) not in target.anchors:
        return f"no id {unquote(fragment)!r} on {site_path(base, target.url) or '/'}"
    return None


def check_pages(root: Path, base: str, fetcher: Fetcher, report: Report) -> None:
    """Fetch every page under ``root`` from the server at ``base`` and check its links."""
    for page in site_pages(root):
        page_url = base + quote(page)
        fetched = fetcher.get(page_url)
        report.pages += 1
        if fetched.status != 200 or fetched.anchors is None:
            why = fetched.reason or f"HTTP {fetched.status}, not an HTML page"
            report.broken.append(Broken(page or "/", page_url, why))
            continue
        seen: set[str] = set()
        for link in fetched.links:
            if not is_internal(link):
                continue
            report.links += 1
            if link in seen:
                continue
            seen.add(link)
            problem = check_link(fetcher, base, fetched.url, link)
            if problem is not None:
                report.broken.append(Broken(page or "/", link, problem))


def check_search_index(root: Path, report: Report) -> None:
    """The search index exists, parses, and lists every page of the site."""
    path = root / SEARCH_INDEX
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        listed = {urldefrag(doc["location"]).url for doc in index["docs"]}
    except (OSError, ValueError, KeyError, TypeError) as error:
        report.broken.append(Broken(SEARCH_INDEX, "", f"not a search index: {error}"))
        return
    for page in site_pages(root):
        if page not in NOT_INDEXED and page not in listed:
            report.broken.append(Broken(SEARCH_INDEX, page or "/", "page not in the index"))


def check_sitemap(root: Path, report: Report) -> None:
    """The sitemap exists and is a well-formed ``urlset``."""
    try:
        tag = ET.parse(root / SITEMAP).getroot().tag
    except (OSError, ET.ParseError) as error:
        report.broken.append(Broken(SITEMAP, "", f"not a sitemap: {error}"))
        return
    if tag.rpartition("}")[2] != "urlset":
        report.broken.append(Broken(SITEMAP, "", f"root element is {tag!r}, expected urlset"))


def check_site(root: Path) -> Report:
    """Serve the built site at ``root`` on loopback and check all of it."""
    report = Report()
    fetcher = Fetcher()
    with serve(root) as base:
        check_pages(root, base, fetcher, report)
    report.fetches = fetcher.fetches
    check_search_index(root, report)
    check_sitemap(root, report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Check that every internal link of a built site resolves."
    )
    parser.add_argument("site", nargs="?", default="site", type=Path, help="the built site")
    args = parser.parse_args(argv)
    root: Path = args.site
    if not (root / "index.html").is_file():
        print(f"check_site: {root} is not a built site (no index.html)", file=sys.stderr)
        return 2
    report = check_site(root)
    for broken in report.broken:
        print(broken)
    print(report.summary())
    return 1 if report.broken else 0


if __name__ == "__main__":
    sys.exit(main())
