"""Children whose lives a test drives and watches, and small waiting helpers."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import anyio
from anyio.abc import TaskStatus

from conngrpc import ChildSpec, telemetry

_serials = itertools.count(1)


class Handle:
    """What a probe child passes to ``started``: the test ends that run through it."""

    def __init__(self, child_id: Hashable) -> None:
        self.child_id = child_id
        self.serial = next(_serials)
        self.error: Exception | None = None
        self._end = anyio.Event()

    def __repr__(self) -> str:
        return f"<Handle {self.child_id!r} #{self.serial}>"

    def crash(self, error: Exception | None = None) -> None:
        """Make the run raise ``error`` (a RuntimeError by default)."""
        self.error = error or RuntimeError(f"{self.child_id!r} crashed on purpose")
        self._end.set()

    def exit(self) -> None:
        """Make the run return normally."""
        self._end.set()

    async def wait(self) -> None:
        await self._end.wait()


class Probe:
    """Makes child specs and records, in order, every start and stop of their runs."""

    def __init__(self) -> None:
        self.log: list[tuple[str, Hashable]] = []
        self.live: dict[Hashable, int] = {}
        self.most_live_at_once = 0
        self.fail_next_starts: dict[Hashable, int] = {}
        #: A child's next start waits here, before it fails or reports started.
        self.gates: dict[Hashable, anyio.Event] = {}

    def spec(self, child_id: Hashable, **options: Any) -> ChildSpec:
        return ChildSpec(child_id, self.start_function(child_id), **options)

    def start_function(self, child_id: Hashable) -> Any:
        async def start(*, task_status: TaskStatus[Handle]) -> None:
            self.log.append(("start", child_id))
            gate = self.gates.pop(child_id, None)
            if gate is not None:
                await gate.wait()
            if self.fail_next_starts.get(child_id, 0) > 0:
                self.fail_next_starts[child_id] -= 1
                raise ValueError(f"{child_id!r} refuses to start")
            handle = Handle(child_id)
            self.live[child_id] = self.live.get(child_id, 0) + 1
            self.most_live_at_once = max(self.most_live_at_once, self.live[child_id])
            try:
                task_status.started(handle)
                await handle.wait()
            finally:
                self.live[child_id] -= 1
                self.log.append(("stop", child_id))
            if handle.error is not None:
                raise handle.error

        return start

    def events(self, kind: str) -> list[Hashable]:
        return [child_id for what, child_id in self.log if what == kind]


#: How often wait_until looks again: often enough to see a change within a millisecond.
POLL_INTERVAL = 0.001

#: How long a test waits for something the code under test should do: ample on a
#: loaded 2-core machine, short enough that a hang fails in seconds, with a traceback.
WAIT_LIMIT = 5.0


async def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_LIMIT) -> None:
    """Poll ``predicate`` every millisecond until it holds, failing after ``timeout``."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(POLL_INTERVAL)


def wait_until_sync(predicate: Callable[[], bool], timeout: float = WAIT_LIMIT) -> None:
    """:func:`wait_until` for a test whose body blocks (``conngrpc.sync``'s): poll every
    millisecond until ``predicate`` holds, failing with TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"expected {predicate!r} to hold within {timeout:g} s")
        time.sleep(POLL_INTERVAL)


async def wait_for(event: anyio.Event, timeout: float = WAIT_LIMIT) -> None:
    """Wait until ``event`` is set, failing with TimeoutError after ``timeout``."""
    with anyio.fail_after(timeout):
        await event.wait()


async def until_cancelled(timeout: float = WAIT_LIMIT) -> None:
    """Wait for the enclosing scope to be cancelled, failing after ``timeout``.

    For a block whose end the code under test brings, as a supervisor that gives up
    cancels its ``async with`` body: if it never does, the test fails instead of hanging.
    """
    with anyio.fail_after(timeout):
        await anyio.sleep_forever()


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class EventLog:
    """Records every telemetry event whose name starts with a prefix."""

    def __init__(self) -> None:
        self.events: list[tuple[tuple[str, ...], dict[str, Any], dict[str, Any]]] = []
        self.at: list[int] = []  # time.monotonic_ns() of each event

    def handle(self, event: tuple[str, ...], measurements: Any, metadata: Any, config: Any) -> None:
        self.events.append((event, dict(measurements), dict(metadata)))
        self.at.append(time.monotonic_ns())

    def names(self, suffix: str | None = None) -> list[tuple[str, ...]]:
        return [e for e, _, _ in self.events if suffix is None or e[-1] == suffix]

    def of(self, name: str) -> list[dict[str, Any]]:
        return [meta for event, _, meta in self.events if event[-1] == name]

    def reconnect_gaps(self) -> list[float]:
        """Seconds from each lost connection (``disconnected``, ``connection_lost``) to its
        channel's next ``connected``: the time a worker's channel was out of the pool."""
        since: dict[Any, int] = {}
        gaps = []
        for (event, _, meta), at in zip(self.events, self.at, strict=True):
            index = meta.get("channel_index")
            if event[1] != "channel" or index is None:
                continue
            if event[-1] == "disconnected" and meta.get("reason") == "connection_lost":
                since[index] = at
            elif event[-1] == "connected" and index in since:
                gaps.append((at - since.pop(index)) / 1e9)
        return gaps


@contextmanager
def recording(events: Sequence[tuple[str, ...]]) -> Iterator[EventLog]:
    """Attach an :class:`EventLog` to ``events`` for the block.

    The bus detaches a handler that raises and only logs it, so a recorder that failed
    would leave a test asserting on half a record: leaving the block says so instead.
    """
    log = EventLog()
    handler_id = ("test-recorder", next(_serials))
    telemetry.attach_many(handler_id, events, log.handle)
    try:
        yield log
    finally:
        still_attached = telemetry.detach(handler_id)
    assert still_attached, "the event recorder raised and the bus detached it"


SUPERVISOR_EVENTS = [
    ("conngrpc", "supervisor", "child_started"),
    ("conngrpc", "supervisor", "child_restarted"),
    ("conngrpc", "supervisor", "child_terminated"),
    ("conngrpc", "supervisor", "gave_up"),
]
