"""Time limits for async tests, on top of pytest-timeout (a pytest plugin).

Every test has a time limit: pytest-timeout's ``timeout`` in pyproject.toml, raised
for a test with ``@pytest.mark.timeout(seconds)``. pytest-timeout cannot stop a test
that waits in the event loop cleanly: its signal would leave the session's shared loop
(tests/live) stuck for every later test, and its thread's stack dump shows only the
loop's select(). So an async test is cancelled first, CLEANUP_RESERVE seconds before
its limit: it fails with a traceback through the await that hung, its cleanup runs,
and the run goes on. A hang that cancellation cannot end (a blocking call, a cleanup
that hangs) meets pytest-timeout's thread at the full limit, which dumps every
thread's stack and ends the run.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine, Generator
from typing import Any

import anyio
import pytest

#: The seconds of an async test's time limit kept for after its cancellation: for its
#: cleanup (a pool lets its calls drain for up to shutdown_grace, 5 s by default) and its
#: failure report. A limit shorter than twice this keeps half.
CLEANUP_RESERVE = 10.0
_time_limit = pytest.StashKey[float]()


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> None:
    """Note the test's time limit; pytest-timeout then starts its own timer as usual."""
    item.stash[_time_limit] = settings.timeout


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    """Run an async test under a deadline CLEANUP_RESERVE seconds before its limit."""
    __tracebackhide__ = True
    test = pyfuncitem.obj
    limit = pyfuncitem.stash.get(_time_limit, None)
    if limit and inspect.iscoroutinefunction(test):
        pyfuncitem.obj = _cancelled_after(limit, test)
    try:
        return (yield)
    finally:
        pyfuncitem.obj = test


def _cancelled_after(
    limit: float, test: Callable[..., Coroutine[Any, Any, object]]
) -> Callable[..., Coroutine[Any, Any, object]]:
    """``test``, failing with TimeoutError from where it waited once cancelled."""
    seconds = limit - min(CLEANUP_RESERVE, limit / 2)

    @functools.wraps(test)
    async def bounded(**kwargs: Any) -> object:
        hung: BaseException | None = None
        with anyio.move_on_after(seconds):
            try:
                return await test(**kwargs)
            except anyio.get_cancelled_exc_class() as cancelled:
                hung = cancelled
                raise
        raise TimeoutError(
            f"the test was cancelled after {seconds:g} s of its {limit:g} s time limit (the "
            "rest is for its cleanup); one that needs longer says so with "
            "@pytest.mark.timeout(seconds)"
        ) from hung

    return bounded
