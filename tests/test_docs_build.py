"""``make docs``'s build is strict: a docstring role that names nothing fails it.

The site is built as the Makefile's ``docs`` recipe builds it (its mkdocs command line,
read from the Makefile) from a copy of what that needs, the files the sdist carries for
it, with one docstring of the copied package changed.
"""

from __future__ import annotations

import html
import importlib
import inspect
import os
import re
import shlex
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent

#: What ``make docs``'s mkdocs build reads (tools/check_dist.py makes the sdist carry it).
SITE_SOURCES = ("mkdocs.yml", "CHANGELOG.md", "docs", "tools/docs", "conngrpc")

#: The docstring the test changes, in the copy, and the page that renders it.
DOCSTRING = '"""Base class of every error conngrpc raises."""'


def mkdocs_command() -> tuple[dict[str, str], list[str]]:
    """The environment and the arguments of the ``mkdocs`` command of ``make docs``."""
    recipe = re.search(r"^docs:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert recipe is not None, "the Makefile has no docs target"
    line = next(line for line in recipe.group(1).splitlines() if "mkdocs " in line)
    words = shlex.split(line)
    env = dict(word.split("=", 1) for word in words if re.fullmatch(r"\w+=\S*", word))
    arguments = words[next(i for i, w in enumerate(words) if w.endswith("/mkdocs")) + 1 :]
    return env, arguments


#: Roles that name something: conngrpc's, another package's (checked by importing it), one
#: the module imports (collections.abc's).
NAMING_SOMETHING = ":class:`Pool`, :class:`grpc.aio.Channel`, :class:`Hashable`"

#: Roles that name nothing, each with what the failed build says of it.
NAMING_NOTHING = {
    ":class:`NoSuchName`": "Could not find cross-reference target 'NoSuchName'",
    ":meth:`Pool.no_such`": "Could not find cross-reference target 'Pool.no_such'",
    # outside conngrpc: grpc.aio imported, Chanel looked up in it
    ":class:`grpc.aio.Chanel`": (
        "'grpc.aio.Chanel' names nothing: grpc.aio has no attribute 'Chanel'"
    ),
    # a name the module imports (collections.abc's), then an attribute of it
    ":meth:`Hashable.__hsh__`": (
        "'Hashable.__hsh__' names nothing: collections.abc.Hashable has no attribute '__hsh__'"
    ),
}


def build(root: Path, roles: str | None = None) -> subprocess.CompletedProcess[str]:
    """``make docs``'s build of a copy of the site whose ConnGRPCError docstring gains a
    paragraph naming ``roles`` (unchanged without them)."""
    for source in SITE_SOURCES:
        if (ROOT / source).is_dir():
            shutil.copytree(
                ROOT / source, root / source, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy(ROOT / source, root / source)
    if roles is not None:
        errors = root / "conngrpc" / "errors.py"
        text = errors.read_text()
        assert DOCSTRING in text
        changed = f'{DOCSTRING[:-3]}\n\n    See {roles}.\n    """'
        errors.write_text(text.replace(DOCSTRING, changed))
    env, arguments = mkdocs_command()
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", *arguments],
        cwd=root,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,  # a few seconds; generous for a loaded machine
        check=False,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, int]:
    """One build (each takes seconds) of a copy whose ConnGRPCError docstring names the
    roles above, those naming something and those naming nothing: its root, its output
    and its exit status. MkDocs writes every page before a strict build gives up."""
    root = tmp_path_factory.mktemp("site")
    result = build(root, ", ".join([NAMING_SOMETHING, *NAMING_NOTHING]))
    return root, result.stdout + result.stderr, result.returncode


def test_the_command_is_read_from_the_makefile() -> None:
    env, arguments = mkdocs_command()
    assert arguments[:2] == ["build", "--strict"]
    assert env == {"NO_MKDOCS_2_WARNING": "1"}


def test_docs_serve_rebuilds_when_anything_the_build_reads_changes() -> None:
    # mkdocs serve watches docs/ and mkdocs.yml itself; the rest, only if listed
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    watched = {"docs", "mkdocs.yml", *config.get("watch", [])}
    assert set(SITE_SOURCES) <= watched, set(SITE_SOURCES) - watched


def test_roles_that_name_something_link_or_show_as_code(built: tuple[Path, str, int]) -> None:
    root, output, _ = built
    for name in ("'Pool'", "grpc.aio.Channel'", "'Hashable'"):
        assert f"{name} names nothing" not in output
        assert f"target {name}" not in output
    page = (root / "site/reference/errors/index.html").read_text()
    assert 'href="../pool/#conngrpc.Pool"' in page
    assert "<code>grpc.aio.Channel</code>" in page
    assert "<code>Hashable</code>" in page


@pytest.mark.parametrize(("role", "error"), NAMING_NOTHING.items())
def test_a_role_that_names_nothing_fails_the_build(
    built: tuple[Path, str, int], role: str, error: str
) -> None:
    _, output, returncode = built

    assert returncode != 0, f"the build passed with {role} in a docstring:\n{output}"
    assert error in output, output


def test_nothing_else_in_the_site_fails_the_build(built: tuple[Path, str, int]) -> None:
    # every warning is one of the roles put in: the site as it is builds clean (make docs
    # builds it, strictly, in make test-all)
    _, output, _ = built
    warnings = [line for line in output.splitlines() if line.startswith("WARNING")]
    assert warnings
    for warning in warnings:
        assert any(error in warning for error in NAMING_NOTHING.values()), warning


# --- every public class, as the built reference shows it -----------------------------------

#: Entries whose constructor is not for callers (mkdocs.yml merges __init__ into every
#: other class): Pool.channel() makes a PooledChannel, get_channel hands out a ThreadChannel.
NO_CONSTRUCTOR = {
    "conngrpc.PooledChannel",
    "conngrpc.sync.PooledChannel",
    "conngrpc.sync.ThreadChannel",
}


@pytest.fixture(scope="module")
def site(built: tuple[Path, str, int]) -> dict[str, str]:
    """The reference pages of that build: path -> HTML. Its one changed docstring gained a
    paragraph after the first, which is what the test below reads."""
    root, _, _ = built
    return {str(page): page.read_text() for page in (root / "site/reference").glob("*/index.html")}


def public_classes() -> list[tuple[str, type]]:
    sys.path.insert(0, str(ROOT / "tools" / "docs"))
    try:
        from public_api import PUBLIC_MODULES
    finally:
        sys.path.pop(0)
    return [
        (f"{module}.{name}", value)
        for module in PUBLIC_MODULES
        for name, value in vars(importlib.import_module(module)).items()
        if name in importlib.import_module(module).__all__
        # a type alias (Event = tuple[str, ...]) is no class, though Python 3.10's
        # isclass says it is
        and inspect.isclass(value)
        and not isinstance(value, types.GenericAlias)
    ]


def entry(site: dict[str, str], identifier: str) -> str:
    """The HTML of one object's entry, from its heading to its first member's."""
    for page in site.values():
        start = page.find(f'id="{identifier}"')
        if start != -1:
            end = page.find('class="doc doc-object doc-', start)
            return page[start : end if end != -1 else None]
    raise AssertionError(f"{identifier} has no entry in the built reference")


def text(html_text: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", html_text)).split())


def _constructs(cls: type) -> bool:
    """Whether conngrpc defines an ``__init__`` for ``cls`` (a Protocol's is no constructor)."""
    if getattr(cls, "_is_protocol", False):
        return False
    return any(
        "__init__" in vars(base) for base in cls.__mro__ if base.__module__.startswith("conngrpc")
    )


@pytest.mark.parametrize(("identifier", "cls"), public_classes(), ids=lambda value: str(value))
def test_every_class_shows_its_constructor_and_its_docstring(
    site: dict[str, str], identifier: str, cls: type
) -> None:
    html_text = entry(site, identifier)
    signature = re.search(r'<div class="doc-signature highlight"><pre>(.*?)</pre>', html_text, re.S)
    shown = text(signature.group(1)) if signature else ""
    if _constructs(cls) and identifier not in NO_CONSTRUCTOR:
        assert shown.startswith(f"{cls.__name__}("), (identifier, shown)
    else:
        assert not shown, (identifier, shown)
    # the docstring's first paragraph, its longest run of words outside markup
    summary = (inspect.getdoc(cls) or "").split("\n\n")[0]
    words = max(re.split(r"``[^`]*``|:\w+:`[^`]*`|[*_]", summary), key=len).strip(" .,;:")
    assert len(words) > 10, (identifier, summary)
    assert " ".join(words.split()) in text(html_text), (identifier, words)
