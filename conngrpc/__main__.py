"""``python -m conngrpc``: the command line (``demo``, ``probe``, ``watch``; see conngrpc._cli)."""

from __future__ import annotations

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
