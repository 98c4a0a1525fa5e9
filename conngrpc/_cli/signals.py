"""Ctrl-C (SIGINT) and SIGTERM end a command cleanly: what demo and watch share.

Python would raise ``KeyboardInterrupt`` wherever the program happens to be, and
``asyncio.run`` would print it with every task it cancelled on the way (dozens of lines
of traceback). Instead, while a command runs, either signal calls the command's own
``stop``, which ends it through its normal exit path, closing what it opened, and the
command says on stderr what it is doing.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Iterator

__all__ = ["stopping_on_signals"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stopping_on_signals(stop: Callable[[], None], doing: str) -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM call ``stop`` and print
    ``<SIGNAL>: <doing>`` on stderr. Call it in the event loop's thread."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        stop()
        with contextlib.suppress(OSError):  # stderr may be gone too
            print(f"{signal.Signals(signum).name}: {doing}", file=sys.stderr, flush=True)

    for signum in _SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        yield
    finally:
        for signum in _SIGNALS:
            loop.remove_signal_handler(signum)
