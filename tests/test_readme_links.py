"""The README is a front page: short, and every link in it to a file of the repository,
and to a heading in it, resolves.

A page's anchors are read as the documentation site makes them: the page rendered by
Python-Markdown with mkdocs.yml's extensions (so a heading's anchor is the ``toc``
extension's own slug, with ``{#id}``, setext headings and fenced code as the site has
them), then the ids of the HTML, read as tools/check_site.py reads a built page. The
README's links are those of its rendered HTML (inline, reference-style, with a title,
images), its code left out.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import markdown
import pytest
import yaml

from tools.check_site import is_internal, parse_html

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

#: Under this many lines: the guide holds the rest.
MOST_LINES = 200


@functools.cache
def site_extensions() -> tuple[list[str], dict[str, dict[str, Any]]]:
    """mkdocs.yml's ``markdown_extensions``: their names, and the options of each."""
    names: list[str] = []
    options: dict[str, dict[str, Any]] = {}
    for entry in yaml.safe_load((ROOT / "mkdocs.yml").read_text())["markdown_extensions"]:
        name, config = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
        names.append(name)
        options[name] = dict(config or {})
    options.get("pymdownx.snippets", {})["base_path"] = [str(ROOT)]
    return names, options


def render(text: str) -> str:
    """``text`` as the site renders a page's Markdown."""
    names, options = site_extensions()
    return markdown.Markdown(extensions=names, extension_configs=options).convert(text)


def anchors(text: str) -> set[str]:
    """Every id the site gives an element of a Markdown page: its headings' anchors."""
    return parse_html(render(text))[1]


def links(text: str) -> list[str]:
    """The targets of a Markdown file's links and images that name no other host (the
    page's own permalinks and code line anchors, which the site adds, left out)."""
    html = markdown.markdown(text, extensions=["attr_list", "tables", "pymdownx.superfences"])
    return [link for link in parse_html(html)[0] if is_internal(link)]


README_LINKS = links(README.read_text())


def test_the_readme_is_under_200_lines() -> None:
    lines = len(README.read_text().splitlines())
    assert lines < MOST_LINES, f"README.md has {lines} lines; move sections into docs/guide/"


def test_the_readme_links_into_the_docs() -> None:
    assert len(README_LINKS) >= 10
    assert any(target.startswith("docs/guide/") for target in README_LINKS)


@pytest.mark.parametrize("target", README_LINKS)
def test_a_link_in_the_readme_resolves(target: str) -> None:
    path, _, anchor = target.partition("#")
    file = (ROOT / path).resolve() if path else README
    assert file.exists(), f"README.md links to {path}, which does not exist"
    if anchor:
        assert file.suffix == ".md", f"an anchor into {path}, which is not Markdown"
        known = anchors(file.read_text())
        assert anchor in known, f"{path} has no heading #{anchor}; it has {sorted(known)}"


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        (
            "Stream-capped throughput, overload protection off",
            "stream-capped-throughput-overload-protection-off",
        ),
        ("`Pool.channel()` or `get_channel()`?", "poolchannel-or-get_channel"),
        ("get_channel cost", "get_channel-cost"),
        ("telemetry.execute cost", "telemetryexecute-cost"),
        ("grpc's service config", "grpcs-service-config"),
        (
            "Fleet (b): one replica turns NOT_SERVING for 3 s, 2 time(s) per client",
            "fleet-b-one-replica-turns-not_serving-for-3-s-2-times-per-client",
        ),
        ("Threads: `conngrpc.sync`", "threads-conngrpcsync"),
    ],
)
def test_anchors_are_made_as_the_site_makes_them(heading: str, anchor: str) -> None:
    """Each pair read from the built site (``id="..."`` on the heading)."""
    assert anchor in anchors(f"## {heading}\n")


def headings(text: str) -> set[str]:
    """The anchors of ``text`` but the code line anchors (``__codelineno-0-1``)."""
    return {anchor for anchor in anchors(text) if not anchor.startswith("__")}


def test_a_repeated_heading_gets_a_numbered_anchor() -> None:
    assert headings("# A\n\n## Notes\n\n## Notes\n\n```\n# not a heading\n```\n") == {
        "a",
        "notes",
        "notes_1",
    }


def test_every_way_of_writing_a_heading_has_its_anchor() -> None:
    page = (
        "Setext\n======\n\n"
        "## Named {#chosen}\n\n"
        "## The _emphasised_ and __strong__ words\n\n"
        "- a list\n\n    ```text\n    # not a heading, in a list\n    ```\n"
    )
    assert headings(page) == {"setext", "chosen", "the-emphasised-and-strong-words"}


def test_every_way_of_writing_a_link_is_read() -> None:
    page = (
        '[inline](a.md#x) [titled](b.md "a title") ![image](c.png) [ref][r] <https://127.0.0.1:9/x>\n'
        "`[code](not-a-link.md)`\n\n[r]: d.md#y\n"
    )
    assert links(page) == ["a.md#x", "b.md", "c.png", "d.md#y"]
