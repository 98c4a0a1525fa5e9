"""One version everywhere: pyproject.toml, conngrpc.__version__ and CHANGELOG.md agree.

The changelog is in Keep a Changelog 1.1.0 form: an Unreleased section first, then one
``## [X.Y.Z] - YYYY-MM-DD`` heading per release, newest first, each with sections only
from Added, Changed, Deprecated, Removed, Fixed and Security.
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import pytest

import conngrpc

try:
    import tomllib
except ImportError:  # Python 3.10: the test extra installs the backport
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
CHANGELOG = ROOT / "CHANGELOG.md"
SECTIONS = ("Added", "Changed", "Deprecated", "Removed", "Fixed", "Security")
RELEASE = re.compile(r"## \[(\d+)\.(\d+)\.(\d+)\] - (\d{4}-\d{2}-\d{2})")


def releases(text: str) -> list[tuple[str, datetime.date]]:
    """The released versions of a changelog, newest first, with their dates.

    :raises ValueError: where the text does not follow the form, saying what came.
    """
    lines = text.splitlines()
    if not lines or lines[0] != "# Changelog":
        raise ValueError(f"expected '# Changelog' as the first line, got {lines[:1]}")
    head = "\n".join(lines[: next((i for i, s in enumerate(lines) if s.startswith("## ")), 0)])
    for names in ("Keep a Changelog", "Semantic Versioning"):
        if names not in head:
            raise ValueError(f"the header above the first version names no {names!r}")
    versions = [line for line in lines if line.startswith("## ")]
    if not versions or versions[0] != "## [Unreleased]":
        raise ValueError(f"expected '## [Unreleased]' first, got {versions[:1]}")
    found: list[tuple[str, datetime.date]] = []
    for line in versions[1:]:
        match = RELEASE.fullmatch(line)
        if match is None:
            raise ValueError(f"expected '## [X.Y.Z] - YYYY-MM-DD', got {line!r}")
        try:
            date = datetime.date.fromisoformat(match[4])
        except ValueError:
            raise ValueError(f"expected a date, got {match[4]!r} in {line!r}") from None
        found.append((".".join(match.group(1, 2, 3)), date))
    numbers = [tuple(int(part) for part in version.split(".")) for version, _ in found]
    if numbers != sorted(set(numbers), reverse=True):
        raise ValueError(f"expected versions newest first, each once, got {numbers}")
    dates = [date for _, date in found]
    if dates != sorted(dates, reverse=True):
        raise ValueError(f"expected dates newest first, got {dates}")
    check_sections(lines)
    return found


def check_sections(lines: list[str]) -> None:
    """Each version's ``###`` sections are Keep a Changelog's, each at most once."""
    version, seen = "", set[str]()
    for line in lines:
        if line.startswith("## "):
            version, seen = line, set()
        elif line.startswith("### "):
            name = line.removeprefix("### ")
            if not version:
                raise ValueError(f"section {name!r} comes before the first version")
            if name not in SECTIONS or name in seen:
                raise ValueError(
                    f"under {version!r}: expected one of {SECTIONS}, each once, got {name!r}"
                )
            seen.add(name)


def test_pyproject_and_the_package_name_one_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]

    assert project["version"] == conngrpc.__version__


def test_the_newest_release_in_the_changelog_is_the_version() -> None:
    newest, _ = releases(CHANGELOG.read_text(encoding="utf-8"))[0]

    assert newest == conngrpc.__version__


def test_the_site_shows_the_changelog_itself_not_a_copy() -> None:
    page = (ROOT / "docs" / "changelog.md").read_text(encoding="utf-8")

    assert page.strip() == '--8<-- "CHANGELOG.md"'


GOOD = """# Changelog

Based on Keep a Changelog 1.1.0; Semantic Versioning.

## [Unreleased]

## [0.2.0] - 2026-12-24

### Fixed

- a fix

## [0.1.0] - 2026-12-06

### Added

#### A group

- a thing
"""


def test_a_changelog_in_form_passes() -> None:
    assert releases(GOOD) == [
        ("0.2.0", datetime.date(2026, 12, 24)),
        ("0.1.0", datetime.date(2026, 12, 6)),
    ]


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        ("# Changelog", "# Changes", "'# Changelog' as the first line"),
        ("Keep a Changelog", "a changelog", "names no 'Keep a Changelog'"),
        ("Semantic Versioning", "semver", "names no 'Semantic Versioning'"),
        ("## [Unreleased]\n", "", "'## [Unreleased]' first"),
        ("[0.2.0] - 2026-12-24", "0.2.0 - 2026-12-24", "got '## 0.2.0 - 2026-12-24'"),
        ("[0.2.0] - 2026-12-24", "[0.2.0]", r"got '## [0.2.0]'"),
        ("[0.2.0] - 2026-12-24", "[0.2.0] - 2026-13-01", "expected a date, got '2026-13-01'"),
        ("[0.2.0] - 2026-12-24", "[0.0.9] - 2026-12-24", "versions newest first"),
        ("[0.2.0] - 2026-12-24", "[0.1.0] - 2026-12-24", "versions newest first"),
        ("[0.2.0] - 2026-12-24", "[0.2.0] - 2026-12-01", "dates newest first"),
        ("### Fixed", "### Improvements", "got 'Improvements'"),
        ("### Fixed\n\n- a fix", "### Fixed\n\n- a fix\n\n### Fixed", "each once, got 'Fixed'"),
        ("## [Unreleased]", "### Added\n\n## [Unreleased]", "comes before the first version"),
    ],
)
def test_a_changelog_out_of_form_is_refused(old: str, new: str, error: str) -> None:
    assert old in GOOD
    with pytest.raises(ValueError, match=re.escape(error)):
        releases(GOOD.replace(old, new, 1))
