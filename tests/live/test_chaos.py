"""Chaos under load: 200 callers on a pool of 4 while the server is killed and restarted."""

from __future__ import annotations

import random
import time
from collections import Counter

import anyio
import grpc
import grpc.aio
import pytest

from conngrpc import ExponentialBackoff, NotConnectedError, Pool, Supervisor
from conngrpc._server import SLEEP_METHOD, ServerProcess
from conngrpc.channel.connector import raw_unary
from tests._probe import EventLog

pytestmark = pytest.mark.anyio

SEED = 20261125
CALLERS = 200
POOL_SIZE = 4
KILLS = 10
MIN_SECONDS = 20.0
DEADLINE = 1.0  # each call's timeout
SLACK = 0.5  # a call must end within its deadline plus this
CALL = b"5"  # the handler sleeps 5 ms
RETRY_PAUSE = 0.01  # a caller that got NotConnectedError tries again after this
BACKOFF = ExponentialBackoff(min=0.1, max=0.5)


@pytest.mark.timeout(120)  # MIN_SECONDS of chaos, and kills that may cost more
async def test_the_pool_survives_repeated_server_kills_under_load(
    pool_name: str, channel_events: EventLog
) -> None:
    chaos = random.Random(SEED)
    errors: Counter[str] = Counter()
    calls = 0
    worst = 0.0
    recovery = 0.0
    with ServerProcess() as server:
        spec = Pool.child_spec(
            name=pool_name,
            pool_size=POOL_SIZE,
            channel={"address": server.address, "backoff": BACKOFF, "connect_timeout": 1.0},
        )

        async def caller(stop: anyio.Event) -> None:
            nonlocal calls, worst
            while not stop.is_set():
                try:
                    channel = Pool.get_channel(pool_name)
                except NotConnectedError:
                    errors["NotConnectedError"] += 1
                    await anyio.sleep(RETRY_PAUSE)
                    continue
                call = raw_unary(channel, SLEEP_METHOD)
                began = time.monotonic()
                try:
                    await call(CALL, timeout=DEADLINE)
                except grpc.aio.AioRpcError as error:
                    errors[error.code().name] += 1
                else:
                    calls += 1
                worst = max(worst, time.monotonic() - began)

        started = time.monotonic()
        async with Supervisor([spec]):
            await Pool.wait_connected(pool_name, timeout=10)
            stop = anyio.Event()
            async with anyio.create_task_group() as callers:
                for _ in range(CALLERS):
                    callers.start_soon(caller, stop)
                for _ in range(KILLS):
                    await anyio.sleep(chaos.uniform(0.8, 1.6))  # the chaos schedule
                    server.kill()
                    await anyio.sleep(chaos.uniform(0.05, 0.5))
                    await anyio.to_thread.run_sync(server.start)
                back = time.monotonic()
                await Pool.wait_connected(pool_name, timeout=BACKOFF.maximum * 1.2 + 1.0)
                recovery = time.monotonic() - back
                remaining = MIN_SECONDS - (time.monotonic() - started)
                if remaining > 0:
                    await anyio.sleep(remaining)  # keep the load on for the whole run
                stop.set()
            elapsed = time.monotonic() - started
    connected = channel_events.of("connected")
    disconnected = channel_events.of("disconnected")
    print(
        f"\nchaos: {elapsed:.1f} s, {KILLS} kills, {CALLERS} callers, {calls} calls succeeded, "
        f"errors {dict(errors)}, worst call {worst * 1000:.0f} ms, "
        f"pool whole {recovery * 1000:.0f} ms after the last restart, "
        f"{len(connected)} connects / {len(disconnected)} disconnects"
    )
    assert elapsed >= MIN_SECONDS
    assert calls > 0
    assert set(errors) <= {"NotConnectedError", "UNAVAILABLE"}
    assert worst <= DEADLINE + SLACK
    assert recovery <= BACKOFF.maximum * 1.2 + 1.0
    assert len(connected) == len(disconnected)  # every connect has its disconnect
    for index in range(POOL_SIZE):
        mine = [
            event[-1]
            for event, _, meta in channel_events.events
            if event[1] == "channel"
            and meta.get("channel_index") == index
            and event[-1] in ("connected", "disconnected")
        ]
        assert mine == ["connected", "disconnected"] * (len(mine) // 2)
    lost = [m for m in disconnected if m["reason"] == "connection_lost"]
    assert len(lost) >= KILLS  # every kill was noticed by at least one channel
