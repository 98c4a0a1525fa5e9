"""Run the test suite on every Python that conngrpc supports and this machine has.

The supported versions are the ``Programming Language :: Python :: 3.X`` classifiers
in pyproject.toml. For each, the interpreter is ``$PYTHON3X`` when set (``PYTHON310``
for 3.10), else ``python3.X`` on PATH, else the newest pyenv install of 3.X. Each
gets its own virtual environment, ``.venv-3.X``, with conngrpc's test and docs extras (built
again when pyproject.toml changes), and runs pytest there (on the testpaths unless
arguments, which go to pytest, say otherwise): every test, the slow tier (tests marked
``slow``, which ``make test`` leaves out) included.

With ``--dist DIR`` (``make test-all`` gives the ``dist`` that ``make dist`` has just
built), the packaging is proven too (``tools/check_dist.py``): the sdist's and the
wheel's contents once, and on each version the wheel installed into a fresh virtual
environment, whose ``python -m conngrpc demo`` must succeed outside the source tree.

One line per version at the end says passed, failed or skipped (not found). The exit
status is 1 when a Python that was found failed (its tests or its wheel check), the
distributions' contents are wrong, or an override names no 3.X.
Runs on any python3, so that CI needs nothing but python3 to start it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import check_dist  # tools/ is on sys.path: this file runs as a script

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"


def supported_versions() -> list[str]:
    """The 3.X versions that pyproject.toml's classifiers claim, oldest first."""
    found = re.findall(r'"Programming Language :: Python :: (3\.\d+)"', PYPROJECT.read_text())
    return sorted(set(found), key=lambda version: int(version.split(".")[1]))


def version_of(python: str) -> str | None:
    """The X.Y that ``python`` runs, or None if it does not run (a pyenv shim may not)."""
    try:
        result = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def pyenv_pythons(version: str) -> list[str]:
    """pyenv's installs of ``version`` (3.X.Y, no suffix such as -dev), newest first."""
    root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    if shutil.which("pyenv"):
        answer = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=False)
        root = answer.stdout.strip() or root
    installs = [
        path
        for path in Path(root, "versions").glob(f"{version}.*")
        if re.fullmatch(rf"{re.escape(version)}\.\d+", path.name)
    ]
    installs.sort(key=lambda path: int(path.name.rsplit(".", 1)[1]), reverse=True)
    return [str(path / "bin" / f"python{version}") for path in installs]


def find_python(version: str) -> tuple[str | None, str]:
    """The interpreter to use for ``version``, and why there is none."""
    override = f"PYTHON{version.replace('.', '')}"
    if os.environ.get(override):
        python = os.environ[override]
        if version_of(python) == version:
            return python, ""
        return None, f"${override}={python} is not Python {version}"
    on_path = shutil.which(f"python{version}")
    for python in ([on_path] if on_path else []) + pyenv_pythons(version):
        if version_of(python) == version:
            return python, ""
    return None, "not found"


def ensure_venv(version: str, python: str) -> Path:
    """``.venv-3.X`` with conngrpc and its test and docs extras (the reference's tools are
    tested too), built by ``python`` if need be."""
    venv = ROOT / f".venv-{version}"
    stamp = venv / ".installed"
    fresh = (
        stamp.exists()
        and stamp.read_text() == python
        and stamp.stat().st_mtime >= PYPROJECT.stat().st_mtime
    )
    if not fresh:
        print(f"test-all: building {venv.name} with {python}", flush=True)
        subprocess.run([python, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
        subprocess.run([*pip, "install", "--quiet", "-e", ".[test,docs]"], cwd=ROOT, check=True)
        stamp.write_text(python)
    return venv


def run(version: str, python: str, pytest_args: list[str]) -> str:
    """Test on one interpreter; the outcome, as the summary shows it."""
    started = time.monotonic()
    try:
        venv = ensure_venv(version, python)
    except subprocess.CalledProcessError as error:
        return f"failed: could not build .venv-{version} ({error})"
    built = time.monotonic()
    print(f"test-all: pytest on Python {version} ({python})", flush=True)
    command = [str(venv / "bin" / "python"), "-m", "pytest", *pytest_args]
    code = subprocess.run(command, cwd=ROOT, check=False).returncode
    took = f"pytest {time.monotonic() - built:.0f} s, venv {built - started:.0f} s"
    return f"passed ({took})" if code == 0 else f"failed: pytest exited {code} ({took})"


def check_wheel(python: str, wheel: Path) -> tuple[bool, str]:
    """The wheel installed with ``python`` and its demo run: did it work, and how long."""
    print(f"test-all: the wheel on Python {python}", flush=True)
    problems, took = check_dist.check_installed(python, wheel)
    for problem in problems:
        print(f"test-all: {problem}", file=sys.stderr, flush=True)
    return not problems, f"{took:.0f} s"


def main(argv: list[str]) -> int:
    """Test on every supported Python found; print the summary; 1 if any failed."""
    options = argparse.ArgumentParser(prog="tools/test_all.py", allow_abbrev=False)
    options.add_argument("--dist", type=Path, help="also prove the sdist and wheel in DIST")
    args, pytest_args = options.parse_known_args(argv)
    outcomes: dict[str, str] = {}
    wheel = None
    if args.dist is not None:
        sdist, wheel = check_dist.distributions(args.dist)
        problems = check_dist.check_wheel(wheel, sdist)
        problems += check_dist.check_sdist(sdist, check_dist.version_of(wheel))
        for problem in problems:
            print(f"test-all: {problem}", file=sys.stderr)
        verdict = "failed: " + "; ".join(problems) if problems else "passed"
        outcomes["sdist and wheel contents"] = f"{verdict} ({wheel.name}, {sdist.name})"
    for version in supported_versions():
        python, missing = find_python(version)
        if python is None:
            verdict = "skipped" if missing == "not found" else "failed"
            outcomes[f"Python {version}"] = f"{verdict}: {missing}"
            continue
        outcome = run(version, python, pytest_args)
        if wheel is not None:
            ran, took = check_wheel(python, wheel)
            if ran:
                outcome += f"; the wheel's demo ran ({took})"
            else:
                outcome = f"failed: the wheel's demo did not run ({took}); tests {outcome}"
        outcomes[f"Python {version}"] = outcome
    print("\ntest-all summary:")
    for what, outcome in outcomes.items():
        print(f"  {what}: {outcome}")
    return 1 if any(outcome.startswith("failed") for outcome in outcomes.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
