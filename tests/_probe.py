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

    def spec(self, child_id: Hashable, **options: Any) -> ChildSpec:
        return ChildSpec(child_id, self.start_function(child_id), **options)

    def start_function(self, child_id: Hashable) -> Any:
        async def start(*, task_status: TaskStatus[Handle]) -> None:
            self.log.append(("start", child_id))
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


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` every millisecond until it holds, failing after ``timeout``."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(POLL_INTERVAL)


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


@contextmanager
def recording(events: Sequence[tuple[str, ...]]) -> Iterator[EventLog]:
    """Attach an :class:`EventLog` to ``events`` for the block."""
    log = EventLog()
    handler_id = ("test-recorder", next(_serials))
    telemetry.attach_many(handler_id, events, log.handle)
    try:
        yield log
    finally:
        telemetry.detach(handler_id)


SUPERVISOR_EVENTS = [
    ("conngrpc", "supervisor", "child_started"),
    ("conngrpc", "supervisor", "child_restarted"),
    ("conngrpc", "supervisor", "child_terminated"),
    ("conngrpc", "supervisor", "gave_up"),
]
