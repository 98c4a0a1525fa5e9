"""tools/check_site.py on small hand-made sites: it finds exactly the broken links."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tools import check_site

TOOL = Path(check_site.__file__)

#: Every page of the made-up site, as written; (page, link) pairs in BROKEN are the faults.
PAGES = {
    "index.html": """<!doctype html><html><head>
        <link rel="stylesheet" href="assets/style.css">
        <link rel="icon" href="/assets/logo.png">
        <script src="assets/missing.js"></script>
        </head><body><h1 id="top">Home</h1>
        <img src="/assets/logo.png" alt="">
        <img srcset="assets/logo.png 1x, assets/missing@2x.png 2x" alt="">
        <picture><source srcset="assets/logo.png"></picture>
        <video poster="assets/missing.jpg"></video>
        <iframe src="guide/"></iframe>
        <a href="guide/">guide</a>
        <a href="guide/#intro">an id on another page</a>
        <a href="guide/index.html#legacy">an a name on another page</a>
        <a href="guide">a folder without its slash (redirected)</a>
        <a href="">this page</a>
        <a href="#top">an id here</a>
        <a href="#top">the same link twice</a>
        <a href="assets/style.css#whatever">a fragment of a stylesheet</a>
        <a href="guide/#missing">no such id</a>
        <a href="#nowhere">no such id here</a>
        <a href="missing/">no such page</a>
        <a href="empty/">a folder without index.html</a>
        <a href="https://127.0.0.1:9/elsewhere">a scheme: not followed</a>
        <a href="//127.0.0.1:9/elsewhere">a host: not followed</a>
        <a href="mailto:dev@localhost">mail</a>
        <a href="javascript:void(0)">script</a>
        <a>no href</a>
        <meta name="meta-name-is-no-anchor">
        </body></html>""",
    "guide/index.html": """<html><body>
        <h2 id="intro">Intro</h2><a name="legacy"></a>
        <a href="../">home</a>
        <a href="../#top">home's top</a>
        <a href="../index.html#meta-name-is-no-anchor">a meta's name</a>
        <a href="/guide/#intro">root-relative</a>
        <a href="../a%20b/">an escaped path</a>
        </body></html>""",
    "a b/index.html": '<html><body><p id="x y">spaced</p><a href="#x%20y">x</a></body></html>',
    # Linked from nowhere: still fetched and checked.
    "orphan/index.html": '<html><body><a href="../gone.html">gone</a></body></html>',
    "404.html": '<html><body><a href="/guide/">guide</a><a href="/nope/">x</a></body></html>',
}
ASSETS = {"assets/style.css": "body {}", "assets/logo.png": "png", "empty/note.txt": "x"}
INDEXED = ["", "guide/", "a b/"]  # orphan/ left out of the search index
BROKEN = {
    ("/", "assets/missing.js", "HTTP 404"),
    ("/", "assets/missing@2x.png", "HTTP 404"),
    ("/", "assets/missing.jpg", "HTTP 404"),
    ("/", "guide/#missing", "no id 'missing' on guide/"),
    ("/", "#nowhere", "no id 'nowhere' on /"),
    ("/", "missing/", "HTTP 404"),
    ("/", "empty/", "HTTP 404"),
    (
        "guide/",
        "../index.html#meta-name-is-no-anchor",
        "no id 'meta-name-is-no-anchor' on index.html",
    ),
    ("orphan/", "../gone.html", "HTTP 404"),
    ("404.html", "/nope/", "HTTP 404"),
    ("search/search_index.json", "orphan/", "page not in the index"),
}


def make_site(root: Path, indexed: list[str] = INDEXED) -> Path:
    for name, text in {**PAGES, **ASSETS}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    docs = [{"location": location, "title": "t", "text": ""} for location in indexed]
    docs.append({"location": "guide/#intro", "title": "Intro", "text": ""})
    (root / "search").mkdir()
    (root / "search" / "search_index.json").write_text(json.dumps({"docs": docs}))
    (root / "sitemap.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"></urlset>\n'
    )
    return root


def test_finds_exactly_the_broken_links(tmp_path: Path) -> None:
    report = check_site.check_site(make_site(tmp_path))

    assert {(b.page, b.link, b.why) for b in report.broken} == BROKEN
    assert report.pages == len(PAGES)
    # Every URL attribute on every page (srcset's two candidates count two), the 4
    # external links and the bare <a> left out.
    assert report.links == 21 + 5 + 1 + 1 + 2


def test_each_target_is_fetched_once(tmp_path: Path) -> None:
    report = check_site.check_site(make_site(tmp_path))

    # 5 pages, 3 other names of pages (guide/index.html, guide redirected, index.html),
    # 2 assets, 7 targets not found (missing.js, missing@2x.png, missing.jpg, missing/,
    # empty/, gone.html, nope/).
    assert report.fetches == 5 + 3 + 2 + 7


def test_a_missing_search_index_and_sitemap_are_reported(tmp_path: Path) -> None:
    root = make_site(tmp_path)
    (root / "search" / "search_index.json").write_text("{}")
    (root / "sitemap.xml").unlink()

    broken = check_site.check_site(root).broken
    where = {b.page: b.why for b in broken}

    assert where["search/search_index.json"].startswith("not a search index")
    assert where["sitemap.xml"].startswith("not a sitemap")


def test_the_server_stops_with_the_check(tmp_path: Path) -> None:
    with (
        check_site.serve(make_site(tmp_path)) as base,
        urllib.request.urlopen(base + "guide/", timeout=30) as answer,
    ):
        assert answer.status == 200
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(base + "guide/", timeout=30)


def test_pages_are_named_as_the_site_links_them(tmp_path: Path) -> None:
    assert check_site.site_pages(make_site(tmp_path)) == [
        "404.html",
        "a b/",
        "guide/",
        "",
        "orphan/",
    ]


def test_the_command_reports_and_exits_1_on_a_broken_link(tmp_path: Path) -> None:
    root = make_site(tmp_path / "site")
    good = make_site(tmp_path / "good", indexed=[*INDEXED, "orphan/"])
    (good / "orphan" / "index.html").write_text("<html><body></body></html>")
    for name in ("index.html", "guide/index.html", "404.html"):
        (good / name).write_text('<html><body><a href="#">x</a></body></html>')

    def run(site: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(TOOL), str(site)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    bad, fine, nothing = run(root), run(good), run(tmp_path / "absent")

    assert bad.returncode == 1
    lines = bad.stdout.splitlines()
    assert "orphan/ -> ../gone.html (HTTP 404)" in lines
    assert len(lines) == len(BROKEN) + 1
    assert lines[-1].startswith(f"check_site: {len(PAGES)} pages fetched, ")
    assert lines[-1].endswith(f", {len(BROKEN)} broken")
    assert fine.returncode == 0, fine.stdout
    assert fine.stdout.endswith(", 0 broken\n")
    assert nothing.returncode == 2
    assert "not a built site" in nothing.stderr
