"""Prove the distributions that ``make dist`` built: what they hold, and that the wheel runs.

``python tools/check_dist.py [DIST] [--python PYTHON ...]``

- DIST (default ``dist``) holds one sdist and one wheel of conngrpc, of one version.
- The wheel holds the conngrpc package (with ``py.typed``) and its metadata, with the
  LICENSE among the metadata, and nothing else: no tests, bench, examples, docs or
  tools. Its modules are exactly the sdist's (none left behind).
- The sdist holds the source and what ``make test`` needs (tests, bench, docs,
  examples, tools, the Makefile), and no build output or caches.
- For each PYTHON (default: the one running this): a fresh virtual environment in a
  temporary folder, the wheel installed there with pip (its dependencies from the
  package index), then ``python -m conngrpc --version`` and ``python -m conngrpc demo``
  run from that folder, outside the source tree, so that the only conngrpc they can
  import is the installed one. The demo must end with status 0 and say "demo done".

Exit status 1 if a check failed. Runs on any python3 (standard library only), so
that ``tools/test_all.py`` can use it for every Python it finds.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parent.parent

#: What the sdist must carry besides the package: the suite and what runs it.
SDIST_MUST_HOLD = [
    "pyproject.toml",
    "README.md",
    "LICENSE",
    "Makefile",
    "conngrpc/py.typed",
    "tests/conftest.py",
    "tests/live/conftest.py",
    "bench/run.py",
    "docs/telemetry.md",
    "examples/fastapi_service/app.py",
    "tools/test_all.py",
    # What `make docs` builds the site from and checks it with (tests/test_docs_build.py).
    "mkdocs.yml",
    "CHANGELOG.md",
    "docs/stylesheets/extra.css",
    "tools/docs/hooks.py",
    "tools/docs/sphinx_roles.py",
    "tools/docs/public_api.py",
    "tools/check_site.py",
]
#: Top-level folders that belong in the sdist but never in the wheel.
NOT_IN_THE_WHEEL = ("tests", "bench", "examples", "docs", "tools")
#: What neither may carry: build output, caches, environments, version control.
NEVER = re.compile(
    r"(^|/)(__pycache__|\.venv[^/]*|\.git|build|dist|\.mypy_cache|\.pytest_cache"
    r"|\.ruff_cache|\.hypothesis|site)(/|$)|\.py[cod]$"
)


def distributions(dist: Path) -> tuple[Path, Path]:
    """The one sdist and the one wheel in ``dist``.

    :raises SystemExit: there are not exactly one of each.
    """
    sdists, wheels = sorted(dist.glob("conngrpc-*.tar.gz")), sorted(dist.glob("conngrpc-*.whl"))
    if len(sdists) != 1 or len(wheels) != 1:
        found = [path.name for path in sorted(dist.iterdir())] if dist.is_dir() else "nothing"
        raise SystemExit(f"check_dist: expected one sdist and one wheel in {dist}, found {found}")
    return sdists[0].resolve(), wheels[0].resolve()


def version_of(wheel: Path) -> str:
    """The version in a wheel's file name (``conngrpc-0.1.0-py3-none-any.whl``)."""
    return wheel.name.split("-")[1]


def check_wheel(wheel: Path, sdist: Path) -> list[str]:
    """What is wrong with the wheel's contents (nothing: an empty list)."""
    problems = []
    version = version_of(wheel)
    info = f"conngrpc-{version}.dist-info"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(f"{info}/METADATA").decode() if f"{info}/METADATA" in names else ""
    strays = [name for name in names if not name.startswith(("conngrpc/", f"{info}/"))]
    if strays:
        problems.append(f"the wheel holds more than conngrpc and its metadata: {strays}")
    if any(name.split("/")[0] in NOT_IN_THE_WHEEL for name in names):
        problems.append("the wheel holds tests, bench, examples, docs or tools")
    problems += [f"the wheel holds {name}" for name in names if NEVER.search(name)]
    for needed in ("conngrpc/py.typed", "conngrpc/__main__.py", f"{info}/licenses/LICENSE"):
        if needed not in names:
            problems.append(f"the wheel lacks {needed}")
    for field in ("Name: conngrpc", f"Version: {version}", "License-Expression: Apache-2.0"):
        if field not in metadata.splitlines():
            problems.append(f"the wheel's METADATA lacks {field!r}")
    modules = {name for name in names if name.startswith("conngrpc/") and name.endswith(".py")}
    with tarfile.open(sdist) as archive:
        top = f"conngrpc-{version}/"
        source = {
            name.removeprefix(top)
            for name in archive.getnames()
            if name.startswith(f"{top}conngrpc/") and name.endswith(".py")
        }
    if modules != source:
        problems.append(
            f"the wheel's modules differ from the sdist's: only in the wheel "
            f"{sorted(modules - source)}, only in the sdist {sorted(source - modules)}"
        )
    return problems


def check_sdist(sdist: Path, version: str) -> list[str]:
    """What is wrong with the sdist's contents (nothing: an empty list)."""
    top = f"conngrpc-{version}"
    with tarfile.open(sdist) as archive:
        names = {str(PurePosixPath(name).relative_to(top)) for name in archive.getnames()}
    problems = [f"the sdist lacks {needed}" for needed in SDIST_MUST_HOLD if needed not in names]
    problems += [f"the sdist holds {name}" for name in sorted(names) if NEVER.search(name)]
    return problems


def check_installed(python: str, wheel: Path) -> tuple[list[str], float]:
    """Install ``wheel`` into a fresh venv made by ``python`` and run the demo from it,
    outside the source tree; what went wrong, and how long it took."""
    began = time.monotonic()
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environment["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    with tempfile.TemporaryDirectory(prefix="conngrpc-wheel-") as folder:
        venv = Path(folder, "venv")
        installed = venv / "bin" / "python"

        def run(*command: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [str(part) for part in command],
                cwd=folder,  # not the source tree: only the installed conngrpc imports
                env=environment,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )

        steps = [
            (python, "-m", "venv", venv),
            (installed, "-m", "pip", "install", "--quiet", wheel),
        ]
        for step in steps:
            result = run(*step)
            if result.returncode != 0:
                failed = f"{' '.join(map(str, step))} failed:\n{result.stderr}"
                return [failed], time.monotonic() - began
        problems = []
        where = run(installed, "-c", "import conngrpc; print(conngrpc.__file__)")
        if not where.stdout.strip().startswith(str(venv)):
            problems.append(f"conngrpc was imported from {where.stdout.strip() or where.stderr}")
        version = run(installed, "-m", "conngrpc", "--version")
        if not version.stdout.startswith(f"conngrpc {version_of(wheel)} "):
            problems.append(f"--version said {version.stdout.strip() or version.stderr!r}")
        demo = run(installed, "-m", "conngrpc", "demo", timeout=120)
        if demo.returncode != 0 or "demo done" not in demo.stdout:
            problems.append(
                f"the demo exited {demo.returncode}:\n{demo.stdout[-2000:]}{demo.stderr[-2000:]}"
            )
    return problems, time.monotonic() - began


def main(argv: list[str]) -> int:
    """Check DIST's contents and the wheel on each PYTHON; 1 if anything is wrong."""
    parser = argparse.ArgumentParser(prog="tools/check_dist.py", description=__doc__.split("\n")[0])
    parser.add_argument("dist", nargs="?", default="dist", type=Path)
    parser.add_argument("--python", action="append", default=[])
    args = parser.parse_args(argv)
    sdist, wheel = distributions(args.dist)
    problems = check_wheel(wheel, sdist) + check_sdist(sdist, version_of(wheel))
    print(f"check_dist: {wheel.name}, {sdist.name}: contents", "ok" if not problems else "WRONG")
    for python in args.python or [sys.executable]:
        found, took = check_installed(python, wheel)
        verdict = "ok" if not found else "FAILED"
        print(f"check_dist: the wheel on {python}: installed, demo run: {verdict} ({took:.0f} s)")
        problems += found
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
