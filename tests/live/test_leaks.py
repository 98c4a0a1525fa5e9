"""Starting and stopping pools leaves nothing behind: descriptors, tasks, threads,
sockets and memory return to where they were.

Every measurement is taken after a warm-up, so that what grpc and anyio start once
per process (grpc's poller thread, anyio's worker thread) belongs to the baseline.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import threading
import time
import tracemalloc
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import grpc.aio
import pytest

from conngrpc import ExponentialBackoff, Pool, telemetry
from conngrpc._server import ServerProcess
from conngrpc.channel.worker import CONNECTION_FAILED, DISCONNECTED
from tests._net import established_sockets, open_file_descriptors
from tests._probe import wait_until
from tests.live.test_pool_servers import peer_of, pool, port_of

pytestmark = pytest.mark.anyio

CYCLES = 100
POOL_SIZE = 8
CALLS_PER_CYCLE = 3
WARM_UP_CYCLES = 2
#: A leaked grpc.aio channel holds about 1.4 KiB of traced memory and a leaked task
#: about 4.7 KiB, so one of either per cycle would grow the heap by 140 KiB or more.
MAX_GROWTH_KIB = 100
KILLS = 3
_LISTEN = "0A"


@dataclass(frozen=True, slots=True)
class Resources:
    """What this process holds that a pool's start and stop could leak."""

    fds: int
    tasks: int
    threads: int
    sockets: int

    @classmethod
    def now(cls, port: int) -> Resources:
        return cls(
            fds=open_file_descriptors(),
            tasks=len(asyncio.all_tasks()),
            threads=threading.active_count(),
            sockets=established_sockets(port),
        )

    def within(self, baseline: Resources) -> bool:
        return (
            self.fds <= baseline.fds
            and self.tasks <= baseline.tasks
            and self.threads <= baseline.threads
            and self.sockets == 0
        )


def accepted_sockets(port: int) -> int:
    """How many connections this process has accepted on ``port`` and not yet closed."""
    mine = {
        target[8:-1]
        for target in map(_link, os.listdir("/proc/self/fd"))
        if target.startswith("socket:[")
    }
    count = 0
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] != _LISTEN and fields[9] in mine:
                count += 1
    return count


def _link(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


async def settled(port: int, baseline: Resources | None = None) -> Resources:
    """The resources once closed connections are gone at both ends (polled, bounded).

    Without ``baseline``, waits until no connection to or from ``port`` is left; with
    one, until the resources are back within it. Returns what it saw last, so that a
    leak shows in the caller's assertion rather than as a timeout.
    """
    gc.collect()  # a closed channel's grpc resources go when the object does
    last = Resources.now(port)

    def done() -> bool:
        nonlocal last
        last = Resources.now(port)
        if baseline is None:
            return last.sockets == 0 and accepted_sockets(port) == 0
        return last.within(baseline)

    with contextlib.suppress(TimeoutError):
        await wait_until(done, timeout=5)
    return last


async def cycle(name: str, address: str) -> None:
    """Start a pool, wait until every channel is connected, call over it, stop it."""
    async with pool(name, address, POOL_SIZE):
        await Pool.wait_connected(name, timeout=5)
        for _ in range(CALLS_PER_CYCLE):
            assert (await peer_of(Pool.get_channel(name))).startswith("ipv4:127.0.0.1:")


def collect_what_earlier_tests_left() -> None:
    """Collect garbage from before this test, so that its finalizers run now and its
    ResourceWarnings (an earlier test's to report) are not raised in this test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def traced_bytes() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def test_a_hundred_pool_starts_and_stops_leave_nothing_behind(
    pool_name: str, grpc_server: tuple[grpc.aio.Server, str]
) -> None:
    _, address = grpc_server
    port = port_of(address)
    collect_what_earlier_tests_left()
    tracemalloc.start()
    try:
        for _ in range(WARM_UP_CYCLES):
            await cycle(pool_name, address)
        before = await settled(port)
        memory_before = traced_bytes()
        snapshot_before = tracemalloc.take_snapshot()
        began = time.monotonic()
        for _ in range(CYCLES):
            await cycle(pool_name, address)
        seconds = time.monotonic() - began
        after = await settled(port, before)
        growth_kib = (traced_bytes() - memory_before) / 1024
        grown = tracemalloc.take_snapshot().compare_to(snapshot_before, "lineno")[:10]
    finally:
        tracemalloc.stop()
    print(
        f"{CYCLES} cycles of a pool of {POOL_SIZE} ({CALLS_PER_CYCLE} calls each): "
        f"{seconds:.2f} s, {seconds / CYCLES * 1000:.1f} ms per cycle; "
        f"fds {before.fds} -> {after.fds}, tasks {before.tasks} -> {after.tasks}, "
        f"threads {before.threads} -> {after.threads}, "
        f"sockets to the server {before.sockets} -> {after.sockets}; "
        f"traced memory growth {growth_kib:+.1f} KiB"
    )
    assert after.sockets == 0
    assert after.fds <= before.fds
    assert after.tasks <= before.tasks
    assert after.threads <= before.threads
    assert growth_kib < MAX_GROWTH_KIB, "\n".join(map(str, grown))


class Tally:
    """Counts channel events by name and reason, keeping no reference to what they carry.

    (``EventLog`` keeps each ``connection_failed`` error, whose traceback holds the
    closed channel of that attempt: it would look like a leak here.)
    """

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def handle(self, event: Any, measurements: Any, metadata: Any, config: Any) -> None:
        self.counts[event[-1]] += 1
        if "reason" in metadata and event[-1] == "disconnected":
            self.counts[f"disconnected:{metadata['reason']}"] += 1

    def more_than(self, name: str, count: int) -> Callable[[], bool]:
        return lambda: self.counts[name] > count

    @contextlib.contextmanager
    def attached(self) -> Iterator[Tally]:
        handler_id = ("test-tally", id(self))
        telemetry.attach_many(handler_id, [CONNECTION_FAILED, DISCONNECTED], self.handle)
        try:
            yield self
        finally:
            telemetry.detach(handler_id)


async def test_a_pool_that_loses_its_server_again_and_again_leaves_nothing_behind(
    pool_name: str,
) -> None:
    backoff = ExponentialBackoff(min=0.05, max=0.2)
    collect_what_earlier_tests_left()
    with ServerProcess() as server, Tally().attached() as tally:
        port = server.port
        # Warm up every path the measured run takes, anyio's worker thread included.
        await anyio.to_thread.run_sync(lambda: None)
        await cycle(pool_name, server.address)
        before = await settled(port)

        async with pool(pool_name, server.address, POOL_SIZE, backoff=backoff):
            for _ in range(KILLS):
                await Pool.wait_connected(pool_name, timeout=5)
                await peer_of(Pool.get_channel(pool_name))
                failed = tally.counts["connection_failed"]
                server.kill()
                await wait_until(lambda: Pool.status(pool_name).current_size == 0, timeout=2)
                await wait_until(tally.more_than("connection_failed", failed), timeout=2)
                await anyio.to_thread.run_sync(server.start)
            await Pool.wait_connected(pool_name, timeout=5)
            await peer_of(Pool.get_channel(pool_name))
        after = await settled(port, before)

    print(
        f"{KILLS} kills of the server under a pool of {POOL_SIZE}: "
        f"{tally.counts['disconnected:connection_lost']} connections lost, "
        f"{tally.counts['connection_failed']} failed attempts; "
        f"fds {before.fds} -> {after.fds}, tasks {before.tasks} -> {after.tasks}, "
        f"threads {before.threads} -> {after.threads}, sockets {after.sockets}"
    )
    assert tally.counts["disconnected:connection_lost"] == KILLS * POOL_SIZE
    assert after.sockets == 0
    assert after.tasks <= before.tasks
    assert after.fds <= before.fds
    assert after.threads <= before.threads
