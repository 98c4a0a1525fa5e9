"""``make docs``'s build is strict: a docstring role that names nothing fails it.

The site is built as the Makefile's ``docs`` recipe builds it (its mkdocs command line,
read from the Makefile) from a copy of what that needs, the files the sdist carries for
it, with one docstring of the copied package changed.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


def build(tmp_path: Path, role: str) -> subprocess.CompletedProcess[str]:
    """``make docs``'s build of a copy of the site whose ConnGRPCError docstring names
    ``role``."""
    for source in SITE_SOURCES:
        if (ROOT / source).is_dir():
            shutil.copytree(
                ROOT / source, tmp_path / source, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy(ROOT / source, tmp_path / source)
    errors = tmp_path / "conngrpc" / "errors.py"
    text = errors.read_text()
    assert DOCSTRING in text
    errors.write_text(text.replace(DOCSTRING, f'"""Base class; see {role}."""'))
    env, arguments = mkdocs_command()
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", *arguments],
        cwd=tmp_path,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,  # a few seconds; generous for a loaded machine
        check=False,
    )


def test_the_command_is_read_from_the_makefile() -> None:
    env, arguments = mkdocs_command()
    assert arguments[:2] == ["build", "--strict"]
    assert env == {"NO_MKDOCS_2_WARNING": "1"}


@pytest.mark.parametrize(
    ("role", "fails"),
    [(":class:`Pool`", False), (":class:`NoSuchName`", True), (":meth:`Pool.no_such`", True)],
)
def test_a_role_that_names_nothing_fails_the_build(tmp_path: Path, role: str, fails: bool) -> None:
    result = build(tmp_path, role)
    output = result.stdout + result.stderr

    if not fails:
        assert result.returncode == 0, output
        assert (
            'href="../pool/#conngrpc.Pool"'
            in (tmp_path / "site/reference/errors/index.html").read_text()
        )
        return
    target = role.split("`")[1]
    assert result.returncode != 0, f"the build passed with {role} in a docstring:\n{output}"
    assert f"Could not find cross-reference target '{target}'" in output, output
