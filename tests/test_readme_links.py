"""The README is a front page: short, and every link in it to a file of the repository,
and to a heading in it, resolves.

Anchors are made as the documentation site makes them (Python-Markdown's ``toc``, which
MkDocs uses): the heading's text without its markup (backticks, asterisks, links),
lower-cased, punctuation dropped, runs of spaces and hyphens made one hyphen; a repeated
heading gets ``_1``, ``_2``.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

#: Under this many lines: the guide holds the rest.
MOST_LINES = 200


def slug(heading: str) -> str:
    """The anchor the site gives a heading whose Markdown text is ``heading``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = text.replace("`", "").replace("*", "")  # code and emphasis marks
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(markdown: str) -> set[str]:
    """Every heading's anchor in a Markdown file (headings inside code fences are not)."""
    found: set[str] = set()
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.DOTALL | re.MULTILINE)
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", prose, re.MULTILINE):
        base = candidate = slug(heading)
        count = 0
        while candidate in found:
            count += 1
            candidate = f"{base}_{count}"
        found.add(candidate)
    return found


def links(markdown: str) -> list[str]:
    """The targets of the Markdown links outside code, which name no other host."""
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.DOTALL | re.MULTILINE)
    prose = re.sub(r"`[^`\n]*`", "", prose)
    targets = re.findall(r"\]\(([^)\s]+)\)", prose)
    return [target for target in targets if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


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
    assert slug(heading) == anchor


def test_a_repeated_heading_gets_a_numbered_anchor() -> None:
    assert anchors("# A\n\n## Notes\n\n## Notes\n\n```\n# not a heading\n```\n") == {
        "a",
        "notes",
        "notes_1",
    }
