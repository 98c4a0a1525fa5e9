"""conngrpc.sync: the sync pool's PooledChannel against grpc's own sync channels.

The clients are those of threaded programs: threads calling a blocking multicallable,
made once per client, back to back, each client for the same time (the other groups'
callers are asyncio tasks). Calls/s counts the calls that succeeded; client CPU is this
process's (the servers run in child processes of their own), over the measured run.

1. Stream cap: one server capped at 10 streams per connection, overload protection off,
   20 ms calls, 100 threads: a sync pool of 4 against four hand-made channels (each its
   own connection) handed out round-robin, grpc's A105 with N=4, and one plain channel.
2. Slow replica: three replicas answering in 20, 20 and 200 ms, 30 threads: a sync pool
   of 6 against grpc's sync ``round_robin``.
3. Overhead: a pool of 1 and one plain channel against a server answering at once.
4. Threads at 100 channels: the threads a sync pool of 100 adds, connected and under
   load, against 100 grpc sync channels each followed with grpc's ``subscribe`` (which
   polls each subscribed channel's state from a thread of its own).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import anyio.to_thread
import grpc

from conngrpc import sync
from conngrpc._server import SLEEP_METHOD, ServerProcess

from ._common import Section, a105_options, cpu_seconds
from .pooled import (
    CPU_COLUMNS,
    FLEET_SLEEP,
    OVERHEAD_CALLERS,
    PLAIN,
    POOL_OF_1,
    PROTECTION,
    SLOW_POOLED,
    SLOW_RR,
    Run,
    _round_robin_config,
    overhead_table,
    slow_replicas,
    slow_table,
    steady_cells,
)

#: A client under test: ``call(request, timeout)`` makes one blocking call, returns its answer.
Call = Callable[[bytes, float], bytes]
#: A client, made afresh for each of its turns.
Client = Callable[[], AbstractContextManager[Call]]

TITLE = "conngrpc.sync"
#: The server's condition in the stream-capped run: streams past the cap wait.
NO_PROTECTION = PROTECTION["overload protection off"]
CAP, CAP_THREADS, CAP_SIZE = 10, 100, 4
SYNC_POOL = f"sync PooledChannel, pool of {CAP_SIZE}"
HAND_MADE = f"{CAP_SIZE} hand-made sync channels, round-robin"
A105 = f"sync A105 N={CAP_SIZE}"
ONE_CHANNEL = "one plain sync channel"
#: The pool's calls/s against each reference's, and its client CPU per call against
#: the hand-made channels'.
CAP_RATE, CAP_CPU = 0.98, 1.15
#: Threads at 100 channels: the pool's size, and the threads of the load.
MANY, MANY_THREADS = 100, 50
MANY_POOL = f"sync pool of {MANY}"
MANY_SUBSCRIBED = f"{MANY} grpc sync channels, each subscribed"
#: "A few threads per pool": what a sync pool may add to the process's Python threads.
FEW = 4
_names = itertools.count(1)


def _multicallable(channel: grpc.Channel, method: str) -> Any:
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


@contextmanager
def _pooled(target: str, size: int, method: str) -> Iterator[Call]:
    """The PooledChannel of a sync pool of ``size``: one multicallable, built once."""
    name = f"bench-sync-{next(_names)}"
    spec = sync.Pool.child_spec(name=name, pool_size=size, channel={"address": target})
    with sync.Supervisor([spec]):
        sync.Pool.wait_connected(name, timeout=30)
        call = _multicallable(sync.Pool.channel(name), method)
        yield lambda request, timeout: call(request, timeout=timeout)


@contextmanager
def _channels(target: str, options: list[list[tuple[str, Any]]]) -> Iterator[list[grpc.Channel]]:
    """A grpc sync channel per ``options``, each READY; closed on exit."""
    channels = [grpc.insecure_channel(target, each) for each in options]
    try:
        for channel in channels:
            grpc.channel_ready_future(channel).result(timeout=30)
        yield channels
    finally:
        for channel in channels:
            channel.close()


def _own(count: int) -> list[list[tuple[str, Any]]]:
    """Options for ``count`` channels, each its own connection (grpc shares one between
    channels of the same target and options)."""
    return [[("conngrpc.bench.channel", index)] for index in range(count)]


@contextmanager
def _grpc(target: str, method: str, options: list[tuple[str, Any]]) -> Iterator[Call]:
    """One grpc sync channel with these options: one multicallable, built once."""
    with _channels(target, [options]) as (channel,):
        call = _multicallable(channel, method)
        yield lambda request, timeout: call(request, timeout=timeout)


@contextmanager
def _hand_made(target: str, method: str, count: int) -> Iterator[Call]:
    """``count`` grpc sync channels, each its own connection, handed out round-robin:
    a multicallable each, built once."""
    with _channels(target, _own(count)) as channels:
        calls = [_multicallable(channel, method) for channel in channels]
        turn = itertools.count()
        yield lambda request, timeout: calls[next(turn) % count](request, timeout=timeout)


def _load(
    call: Call,
    threads: int,
    seconds: float,
    request: bytes,
    run: Run,
    server_pid: int | None = None,
    during: Callable[[float], object] | None = None,
    timeout: float = 10.0,
) -> None:
    """``threads`` threads calling back to back for ``seconds``, each call with a deadline
    ``timeout`` seconds away; add what they saw to ``run``. ``during(stop)`` runs in this
    thread meanwhile."""
    parts = [Run() for _ in range(threads)]
    start = threading.Barrier(threads + 1)
    stop = 0.0

    def caller(part: Run) -> None:
        latencies, answers, errors = part.latencies, part.by_answer, part.errors
        start.wait()
        while time.monotonic() < stop:
            began = time.perf_counter()
            try:
                answer = call(request, timeout)
            except grpc.RpcError as error:
                errors[error.code().name] += 1  # type: ignore[attr-defined]
                continue
            latencies.append(time.perf_counter() - began)
            answers[answer] += 1

    workers = [threading.Thread(target=caller, args=(part,), daemon=True) for part in parts]
    for worker in workers:
        worker.start()
    cpu, server = cpu_seconds(), cpu_seconds(server_pid) if server_pid else 0.0
    began = time.monotonic()
    stop = began + seconds
    start.wait()
    if during is not None:
        during(stop)
    for worker in workers:
        worker.join()
    run.seconds += time.monotonic() - began
    run.client_cpu += cpu_seconds() - cpu
    run.server_cpu += (cpu_seconds(server_pid) - server) if server_pid else 0.0
    for part in parts:
        run.latencies += part.latencies
        run.by_answer += part.by_answer
        run.errors += part.errors


def _rounds(
    clients: dict[str, Client],
    rounds: int,
    threads: int,
    seconds: float,
    request: bytes,
    server_pid: int | None = None,
) -> dict[str, Run]:
    """Each client in turn, made afresh, ``rounds`` times (every other round reversed),
    each after a warm-up."""
    runs = {label: Run() for label in clients}
    labels = list(clients)
    for round_ in range(rounds):
        for label in labels if round_ % 2 == 0 else labels[::-1]:
            with clients[label]() as call:
                _load(call, threads, min(0.3, seconds), request, Run())  # warm-up
                _load(call, threads, seconds, request, runs[label], server_pid)
    return runs


async def sync_pools(quick: bool) -> list[Section]:
    """The four benchmarks, run in a worker thread: their callers block."""
    return await anyio.to_thread.run_sync(_sections, quick)


def _sections(quick: bool) -> list[Section]:
    return [stream_cap(quick), slow_replica(quick), overhead(quick), threads(quick)]


# --- 1. one stream-capped server ------------------------------------------------------------


def stream_cap(quick: bool) -> Section:
    seconds, rounds = (0.3, 1) if quick else (3.0, 3)
    with ServerProcess(args=["--max-streams", str(CAP), *NO_PROTECTION]) as server:
        address = server.address
        clients: dict[str, Client] = {
            SYNC_POOL: lambda: _pooled(address, CAP_SIZE, SLEEP_METHOD),
            HAND_MADE: lambda: _hand_made(address, SLEEP_METHOD, CAP_SIZE),
            A105: lambda: _grpc(address, SLEEP_METHOD, a105_options(CAP_SIZE)),
            ONE_CHANNEL: lambda: _grpc(address, SLEEP_METHOD, []),
        }
        runs = _rounds(clients, rounds, CAP_THREADS, seconds, b"20", server.pid)
    return cap_table(runs, rounds, seconds)


def _cpu_per_call(run: Run) -> float:
    """The client's CPU per successful call, in microseconds."""
    return 1e6 * run.client_cpu / len(run.latencies) if run.latencies else float("nan")


def cap_table(runs: dict[str, Run], rounds: int, seconds: float) -> Section:
    """The stream-capped table from each client's run of 20 ms calls."""
    section = Section(
        f"{TITLE}, stream cap: one server capped at {CAP} streams per connection, 20 ms"
        f" calls, {CAP_THREADS} threads, overload protection off",
        [
            "client",
            "calls/s",
            "p50 ms",
            "p99 ms",
            "errors",
            *CPU_COLUMNS,
            "client CPU us per call",
        ],
    )
    for label, run in runs.items():
        section.add(label, *steady_cells(run), _cpu_per_call(run))
    pool = runs[SYNC_POOL]
    for reference in (HAND_MADE, A105):
        against = runs[reference].rate
        section.target(f"{SYNC_POOL}, calls/s", pool.rate, ">=", CAP_RATE, reference, against)
    section.target(
        f"{SYNC_POOL}, client CPU us per call",
        _cpu_per_call(pool),
        "<=",
        CAP_CPU,
        HAND_MADE,
        _cpu_per_call(runs[HAND_MADE]),
    )
    section.notes.append(
        f"{rounds} rounds of {seconds:g} s per client, the clients taking turns (every other "
        "round reversed), each made afresh and warmed up first; the server (its own process) "
        "has grpc's overload protection off, so streams past the cap wait. Each thread calls "
        "a blocking multicallable made once per client; the hand-made channels each have a "
        "channel option of their own, so each is its own connection. Client CPU: this "
        "process's, per successful call."
    )
    return section


# --- 2. a slow replica ------------------------------------------------------------------------


def slow_replica(quick: bool) -> Section:
    seconds, rounds, threads = (0.3, 1, 30) if quick else (4.0, 2, 30)
    servers = slow_replicas()
    try:
        for server in servers:
            server.start()
        target = "ipv4:" + ",".join(s.address for s in servers)
        clients: dict[str, Client] = {
            SLOW_POOLED: lambda: _pooled(target, 6, FLEET_SLEEP),
            SLOW_RR: lambda: _grpc(target, FLEET_SLEEP, _round_robin_config()),
        }
        runs = _rounds(clients, rounds, threads, seconds, b"0")
    finally:
        for server in servers:
            server.kill()
    section = slow_table(
        runs, str(servers[2].port).encode(), threads, rounds, seconds, f"{TITLE}, slow replica"
    )
    section.notes.append(
        "The callers are threads calling a blocking multicallable: the sync pool's "
        "PooledChannel, and a grpc sync channel to `ipv4:` the three replicas with "
        f"`{_round_robin_config()[0][1]}` as its service config."
    )
    return section


# --- 3. overhead ------------------------------------------------------------------------------


def overhead(quick: bool) -> Section:
    seconds, rounds = (0.3, 1) if quick else (2.0, 6)
    with ServerProcess(args=NO_PROTECTION) as server:
        address = server.address
        clients: dict[str, Client] = {
            POOL_OF_1: lambda: _pooled(address, 1, SLEEP_METHOD),
            PLAIN: lambda: _grpc(address, SLEEP_METHOD, []),
        }
        sequential = _rounds(clients, rounds * 2, 1, seconds / 2, b"0")
        loaded = _rounds(clients, rounds, OVERHEAD_CALLERS, seconds, b"0")
    section = overhead_table(
        f"{TITLE}, overhead: pool of 1 vs one plain channel", sequential, loaded
    )
    section.notes.append(
        f"Sync clients, the callers threads: {rounds * 2} rounds of {seconds / 2:g} s with one "
        f"thread, {rounds} of {seconds:g} s with {OVERHEAD_CALLERS}, the two clients taking "
        "turns, each made afresh and warmed up first; the server answers Sleep(0) at once."
    )
    return section


# --- 4. the threads of 100 channels ------------------------------------------------------------


def os_threads() -> float:
    """The process's threads as the OS counts them (grpc's own among them); nan where
    /proc is not there to say."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Threads:"):
                    return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def _counts() -> tuple[float, float]:
    return float(threading.active_count()), os_threads()


@contextmanager
def _subscribed(target: str, method: str) -> Iterator[Call]:
    """``MANY`` grpc sync channels, each its own connection and each followed with
    grpc's ``subscribe`` until it closes, handed out round-robin."""
    with _channels(target, _own(MANY)) as channels:
        followed = [(channel, lambda state: None) for channel in channels]
        for channel, callback in followed:
            channel.subscribe(callback, try_to_connect=True)
        try:
            calls = [_multicallable(channel, method) for channel in channels]
            turn = itertools.count()
            yield lambda request, timeout: calls[next(turn) % MANY](request, timeout=timeout)
        finally:
            for channel, callback in followed:
                channel.unsubscribe(callback)


def _settled(before: float, bound: float = 5.0) -> tuple[float, float]:
    """The thread counts once the Python threads are back to ``before``, or ``bound``
    seconds passed (grpc's polling threads end at their next poll, 0.2 s apart)."""
    deadline = time.monotonic() + bound
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    return _counts()


def _threads_of(client: Client, seconds: float, request: bytes) -> tuple[list[float], Run]:
    """The thread counts before, connected, under load (the load's own threads taken
    off) and after; and the load's run."""
    before = _counts()
    run = Run()
    peak = [0.0, 0.0]

    def sample(stop: float) -> None:
        while time.monotonic() < stop:
            for index, count in enumerate(_counts()):
                peak[index] = max(peak[index], count - MANY_THREADS)
            time.sleep(0.05)

    with client() as call:
        connected = _counts()
        _load(call, MANY_THREADS, min(0.3, seconds), request, Run())  # warm-up
        _load(call, MANY_THREADS, seconds, request, run, during=sample)
    after = _settled(before[0])
    python = [before[0], connected[0], peak[0], after[0]]
    native = [before[1], connected[1], peak[1], after[1]]
    return python + native, run


def threads(quick: bool) -> Section:
    seconds = 0.3 if quick else 3.0
    with ServerProcess(args=NO_PROTECTION) as server:
        address = server.address
        clients: dict[str, Client] = {
            MANY_POOL: lambda: _pooled(address, MANY, SLEEP_METHOD),
            MANY_SUBSCRIBED: lambda: _subscribed(address, SLEEP_METHOD),
        }
        measured = {label: _threads_of(client, seconds, b"20") for label, client in clients.items()}
    return threads_table(measured, seconds)


def threads_table(measured: dict[str, tuple[list[float], Run]], seconds: float) -> Section:
    """The threads table from each client's counts (Python's four, then the OS's four)."""
    moments = ["before", "connected", "under load", "after"]
    section = Section(
        f"{TITLE}, threads at {MANY} channels: a sync pool against grpc sync channels"
        " followed with subscribe",
        [
            "client",
            *(f"Python threads {moment}" for moment in moments),
            *(f"OS threads {moment}" for moment in moments),
            "calls/s under load",
            "client CPU us per call",
        ],
    )
    for label, (counts, run) in measured.items():
        section.add(label, *(int(c) if c == c else c for c in counts), run.rate, _cpu_per_call(run))
    counts = measured[MANY_POOL][0]
    section.target(f"Python threads {MANY_POOL} adds under load", counts[2] - counts[0], "<=", FEW)
    section.notes.append(
        "Threads: threading.active_count() and, on Linux, the OS's count (/proc/self/status"
        " `Threads:`, grpc's own threads among them), read before the client is made, once its"
        f" channels are connected, at their most while {MANY_THREADS} threads make 20 ms calls"
        f" through it for {seconds:g} s (those {MANY_THREADS} taken off), and after it closed"
        " (once the Python threads are back to where they began, or 5 s passed). grpc's"
        " `subscribe` polls each subscribed channel's state from a thread of its own; a sync"
        " pool reads its channels' states from its supervisor's one thread."
    )
    return section
