"""Time limits for async tests, on top of pytest-timeout (a pytest plugin).

Every test has a time limit: pytest-timeout's ``timeout`` in pyproject.toml, raised
for a test with ``@pytest.mark.timeout(seconds)``. pytest-timeout cannot stop a test
that waits in the event loop cleanly: its signal would leave the session's shared loop
(tests/live) stuck for every later test, and its thread's stack dump shows only the
loop's select(). So an async test is cancelled first, at 80% of its limit: it fails
with a traceback through the await that hung, its cleanup runs, and the run goes on.
A hang that cancellation cannot end (a blocking call, a cleanup that hangs) meets
pytest-timeout's thread at the full limit, which dumps every thread's stack and ends
the run.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine, Generator
from typing import Any

import anyio
import pytest

#: The share of its time limit after which an async test is cancelled; the rest is left
#: for its cleanup and fixtures, before pytest-timeout's thread ends the whole run.
ASYNC_SHARE_OF_TIME_LIMIT = 0.8
_time_limit = pytest.StashKey[float]()


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> None:
    """Note the test's time limit; pytest-timeout then starts its own timer as usual."""
    item.stash[_time_limit] = settings.timeout


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    """Run an async test under a deadline of ASYNC_SHARE_OF_TIME_LIMIT of its limit."""
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
    seconds = limit * ASYNC_SHARE_OF_TIME_LIMIT

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
            f"the test was cancelled after {seconds:g} s, {ASYNC_SHARE_OF_TIME_LIMIT:.0%} "
            f"of its {limit:g} s time limit; one that needs longer says so with "
            "@pytest.mark.timeout(seconds)"
        ) from hung

    return bounded
