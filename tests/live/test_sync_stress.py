"""conngrpc.sync under stress, against real servers: exact counts under a hundred threads,
nothing left after fifty starts and stops, interceptors, TLS, and max_calls_per_channel.

The servers run on an event loop of their own thread (tests/_sync_fleet.py); every call
carries an ``x-call`` id in its metadata, so the test knows from the server's side which
calls reached it, and how often.
"""

from __future__ import annotations

import gc
import itertools
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conngrpc import NotConnectedError, sync
from conngrpc._server import PEER_METHOD, SLEEP_METHOD
from conngrpc.channel.worker import CONNECTION_FAILED
from conngrpc.sync.runtime import ThreadAdmission, thread_pools
from tests._certs import TLSMaterial, make_tls_material
from tests._fleet import COLLECT_METHOD, COUNT_METHOD, ECHO_METHOD, Backend
from tests._net import established_sockets, open_file_descriptors
from tests._probe import WAIT_LIMIT, recording, wait_until_sync
from tests._sync_fleet import sync_fleet
from tests.live.test_sync import in_parallel, raw, running

OK = grpc.StatusCode.OK
CANCELLED = grpc.StatusCode.CANCELLED
DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
CALL_ID = "x-call"

_serials = itertools.count(1)


def tagged(call_id: str) -> tuple[tuple[str, str], ...]:
    return ((CALL_ID, call_id),)


def ids_seen(backend: Backend, key: str = CALL_ID, prefix: str = "") -> list[str]:
    """The values of metadata ``key`` the server received, one per call, in order."""
    return [
        str(value)
        for name, value in list(backend.metadata)
        if name == key and str(value).startswith(prefix)
    ]


def all_counts_zero(name: str) -> bool:
    """No call in flight in pool ``name``: neither its count nor any channel's own."""
    status = sync.Pool.status(name)
    channels = [w.channel for w in sync.Pool.get_all_workers(name)]
    return (
        status.in_flight == 0
        and not any(status.in_flight_by_channel.values())
        and not any(channel.in_flight for channel in channels)  # type: ignore[union-attr]
    )


class Tally:
    """A counter several threads add to."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self, amount: int = 1) -> None:
        with self._lock:
            self.value += amount


# --- 1. in-flight counts stay exact under a hundred threads ----------------------------------

#: Kinds of call whose call stays open until the observer has seen them all open.
HELD = ("future_cancel", "stream_cancel")
#: Kinds of call that may end before they reach the server (cancelled at once).
MAY_NOT_REACH = ("future_cancel",)
KINDS = st.sampled_from(
    [
        *HELD,
        "call",
        "with_call",
        "future",
        "future_callback",
        "stream_read",
        "stream_unary",
        "stream_stream",
    ]
)
THREADS = 100


def test_in_flight_counts_stay_exact_with_a_hundred_threads_calling_at_once(
    pool_name: str,
) -> None:
    """A hundred threads, each making one call of a drawn kind at once through one
    PooledChannel over a pool of 4. Sampled throughout, the pool's count is never
    negative, never more than the calls started less those known to have ended, and its
    channels' counts sum to it; while every held call is open, it counts them all; once
    all have ended, every count is 0, and the server received each call that had to
    reach it, once."""
    with sync_fleet(1) as ([backend], _), running(pool_name, backend.address, 4):
        pooled = sync.Pool.channel(pool_name)
        sleep = raw(pooled, "unary_unary", SLEEP_METHOD)
        count = raw(pooled, "unary_stream", COUNT_METHOD)
        collect = raw(pooled, "stream_unary", COLLECT_METHOD)
        echo = raw(pooled, "stream_stream", ECHO_METHOD)

        @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
        @given(kinds=st.lists(KINDS, min_size=THREADS, max_size=THREADS))
        def example(kinds: list[str]) -> None:
            prefix = f"{next(_serials)}-"
            started, ended, held_open, finished = Tally(), Tally(), Tally(), Tally()
            held = sum(kind in HELD for kind in kinds)
            release = threading.Event()
            callbacks: list[list[object]] = [[] for _ in kinds]
            violations: list[str] = []
            samples: list[int] = []

            def one(index: int, kind: str) -> None:
                metadata = tagged(f"{prefix}{index}")
                started.add()
                if kind == "call":
                    assert sleep(b"2", timeout=10, metadata=metadata) == str(backend.port).encode()
                    ended.add()  # a blocking call's count ends before it returns
                elif kind == "with_call":
                    _, call = sleep.with_call(b"2", timeout=10, metadata=metadata)
                    ended.add()
                    assert call.code() is OK
                elif kind == "future":
                    assert sleep.future(b"2", timeout=10, metadata=metadata).result(WAIT_LIMIT)
                elif kind == "future_callback":
                    done = threading.Event()
                    future = sleep.future(b"2", timeout=10, metadata=metadata)
                    future.add_done_callback(
                        lambda call: (callbacks[index].append(call), done.set())
                    )
                    assert done.wait(WAIT_LIMIT)
                    assert future.code() is OK
                elif kind == "future_cancel":
                    future = sleep.future(b"5000", timeout=30, metadata=metadata)
                    held_open.add()
                    release.wait(WAIT_LIMIT)
                    assert future.cancel()
                    assert future.cancelled()
                elif kind == "stream_cancel":
                    stream = count(b"1000:5", timeout=30, metadata=metadata)
                    assert next(stream) == b"0"  # so it reached the server
                    held_open.add()
                    release.wait(WAIT_LIMIT)
                    stream.cancel()
                    assert stream.code() is CANCELLED
                elif kind == "stream_read":
                    assert list(count(b"3:1", timeout=10, metadata=metadata)) == [b"0", b"1", b"2"]
                elif kind == "stream_unary":
                    assert collect(iter([b"a"] * 4), timeout=10, metadata=metadata) == b"4"
                    ended.add()
                else:  # stream_stream
                    echoed = echo(iter([b"x", b"y"]), timeout=10, metadata=metadata)
                    assert list(echoed) == [b"x", b"y"]

            def observe() -> None:
                """Sample the counts until every caller is done; release the held calls
                once all are open and counted."""
                deadline = time.monotonic() + WAIT_LIMIT * 2
                while finished.value < THREADS and time.monotonic() < deadline:
                    known_ended = ended.value  # read first: these ended before the status
                    status = sync.Pool.status(pool_name)
                    begun = started.value  # read last: these began before it, at least
                    in_flight, by_channel = status.in_flight, status.in_flight_by_channel
                    samples.append(in_flight)
                    if not 0 <= in_flight <= begun - known_ended:
                        violations.append(
                            f"in_flight {in_flight}: {begun} began, {known_ended} ended"
                        )
                    if sum(by_channel.values()) != in_flight or min(by_channel.values()) < 0:
                        violations.append(f"by channel {dict(by_channel)} against {in_flight}")
                    if not release.is_set() and held_open.value == held:
                        # every held call is open: counted, whatever else runs now
                        if sync.Pool.status(pool_name).in_flight < held:
                            violations.append(f"{held} held calls open, counted fewer")
                        release.set()
                    time.sleep(0.001)  # the sampling's pace: a busy loop would starve the callers
                release.set()

            def work(index: int) -> None:
                if index == THREADS:
                    observe()
                    return
                try:
                    one(index, kinds[index])
                finally:
                    finished.add()

            in_parallel(THREADS + 1, work)
            assert violations == []
            assert max(samples) > 0  # the counts were sampled while calls ran
            # a future's count ends in grpc's done callback, which may run after its result
            wait_until_sync(lambda: all_counts_zero(pool_name))
            status = sync.Pool.status(pool_name)
            assert status.in_flight == 0
            assert sorted(status.in_flight_by_channel) == [0, 1, 2, 3]
            assert set(status.in_flight_by_channel.values()) == {0}
            for index, kind in enumerate(kinds):
                if kind == "future_callback":
                    assert len(callbacks[index]) == 1  # called once
            # the server saw each call that had to reach it, and none twice
            reached = Counter(ids_seen(backend, prefix=prefix))
            assert max(reached.values()) == 1
            certain = {f"{prefix}{i}" for i, kind in enumerate(kinds) if kind not in MAY_NOT_REACH}
            assert certain <= set(reached) <= {f"{prefix}{i}" for i in range(THREADS)}

        example()


def test_a_stream_its_caller_stops_reading_and_drops_ends_as_grpc_ends_it(
    pool_name: str,
) -> None:
    """grpc cancels a response stream nobody holds any more (its ``__del__``), as after
    ``for message in stream: break``; through a sync pool too, so its counts end."""
    with (
        sync_fleet(1) as ([backend], _),
        running(pool_name, backend.address, 1, channel={"shutdown_grace": 0.1}),
    ):
        for channel in (sync.Pool.channel(pool_name), sync.Pool.get_channel(pool_name)):
            for message in raw(channel, "unary_stream", COUNT_METHOD)(b"1000:5", timeout=30):
                assert message == b"0"
                break
        gc.collect()
        wait_until_sync(lambda: all_counts_zero(pool_name))


# --- 2. nothing left behind after fifty starts and stops ----------------------------------------

CYCLES = 50
#: Descriptors that may come and go between two reads without being a leak (grpc's and
#: the interpreter's own, such as an epoll or eventfd set up lazily): far fewer than one
#: per cycle would leave over 50 cycles.
FD_MARGIN = 3


def cycle(name: str, backend: Backend) -> list[grpc.Channel]:
    """Start a sync supervisor with a pool of 4, make a call of each kind, stop it; the
    pool's channels, handed out by ``get_channel``."""
    with running(name, backend.address, 4):
        pooled = sync.Pool.channel(name)
        assert raw(pooled, "unary_unary", PEER_METHOD)(b"", timeout=5)
        assert raw(pooled, "unary_unary", SLEEP_METHOD).future(b"1", timeout=5).result(5)
        assert list(raw(pooled, "unary_stream", COUNT_METHOD)(b"2:1", timeout=5)) == [b"0", b"1"]
        stream = raw(pooled, "unary_stream", COUNT_METHOD)(b"1000:5", timeout=30)
        assert next(stream) == b"0"
        stream.cancel()
        channels = [sync.Pool.get_channel(name) for _ in range(4)]
        for channel in channels:
            assert raw(channel, "unary_unary", PEER_METHOD)(b"", timeout=5)
    return channels


def test_fifty_sync_supervisor_starts_and_stops_leave_no_thread_socket_or_descriptor(
    pool_name: str,
) -> None:
    """Each stop closes the pool's connections itself: the test keeps every channel
    handed out (as a stub built on one would), so that none is closed by being
    collected."""
    with sync_fleet(1) as ([backend], _):
        port = backend.port

        def connections() -> tuple[int, int]:
            """The connections to the server open now: the client's ends, the server's."""
            return established_sockets(port), established_sockets(port, accepted=True)

        for _ in range(2):  # grpc's and anyio's once-per-process threads and descriptors
            cycle(pool_name, backend)
        wait_until_sync(lambda: connections() == (0, 0))
        threads, fds = set(threading.enumerate()), open_file_descriptors()
        began = time.monotonic()
        kept = [cycle(pool_name, backend) for _ in range(CYCLES)]
        seconds = time.monotonic() - began

        def settled() -> bool:
            return (
                connections() == (0, 0)
                and set(threading.enumerate()) <= threads
                and open_file_descriptors() <= fds + FD_MARGIN
            )

        with suppress(TimeoutError):  # the assertions below say what is left
            wait_until_sync(settled)
        left = [thread.name for thread in set(threading.enumerate()) - threads]
        print(
            f"{CYCLES} cycles of a sync pool of 4: {seconds:.2f} s; fds {fds} -> "
            f"{open_file_descriptors()}; threads left {left}; connections {connections()}"
        )
        assert connections() == (0, 0)  # the server's ends closed too
        assert left == []
        assert open_file_descriptors() <= fds + FD_MARGIN
        assert len({id(channel) for channels in kept for channel in channels}) == CYCLES * 4


# --- 3. grpc's sync interceptors see every call ----------------------------------------------


class Stamp(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Copies each call's ``x-call`` id into an ``x-stamped`` entry, and notes it."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def _stamped(self, details: Any) -> Any:
        metadata = list(details.metadata or ())
        call_id = dict(metadata)[CALL_ID]
        self.seen.append(call_id)
        return details._replace(metadata=[*metadata, ("x-stamped", call_id)])

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._stamped(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._stamped(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._stamped(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._stamped(details), requests)


def every_kind_of_call(channel: grpc.Channel, prefix: str, port: int) -> list[str]:
    """One call of each kind and way over ``channel``, each tagged; their ids."""
    sleep = raw(channel, "unary_unary", SLEEP_METHOD)
    answer = str(port).encode()
    assert sleep(b"1", timeout=5, metadata=tagged(f"{prefix}call")) == answer
    assert sleep.with_call(b"1", timeout=5, metadata=tagged(f"{prefix}with_call"))[0] == answer
    assert sleep.future(b"1", timeout=5, metadata=tagged(f"{prefix}future")).result(5) == answer
    count = raw(channel, "unary_stream", COUNT_METHOD)
    assert list(count(b"2:1", timeout=5, metadata=tagged(f"{prefix}unary_stream"))) == [b"0", b"1"]
    collect = raw(channel, "stream_unary", COLLECT_METHOD)
    assert collect(iter([b"a"] * 3), timeout=5, metadata=tagged(f"{prefix}stream_unary")) == b"3"
    assert (
        collect.future(
            iter([b"a"]), timeout=5, metadata=tagged(f"{prefix}stream_unary_future")
        ).result(5)
        == b"1"
    )
    echo = raw(channel, "stream_stream", ECHO_METHOD)
    echoed = echo(iter([b"x", b"y"]), timeout=5, metadata=tagged(f"{prefix}stream_stream"))
    assert list(echoed) == [b"x", b"y"]
    return [
        f"{prefix}{way}"
        for way in (
            "call",
            "with_call",
            "future",
            "unary_stream",
            "stream_unary",
            "stream_unary_future",
            "stream_stream",
        )
    ]


def test_sync_interceptors_see_every_call_of_the_pooled_channel_and_of_handed_out_channels(
    pool_name: str,
) -> None:
    stamp = Stamp()
    with (
        sync_fleet(1) as ([backend], _),
        running(pool_name, backend.address, 2, channel={"interceptors": [stamp]}),
    ):
        made = every_kind_of_call(sync.Pool.channel(pool_name), "pooled-", backend.port)
        for turn in range(2):  # both channels, round-robin
            made += every_kind_of_call(
                sync.Pool.get_channel(pool_name), f"got{turn}-", backend.port
            )
        wait_until_sync(lambda: all_counts_zero(pool_name))
    assert len(made) == 21
    assert Counter(stamp.seen) == Counter(made)  # each call through the interceptor, once
    assert Counter(ids_seen(backend)) == Counter(made)
    assert Counter(ids_seen(backend, "x-stamped")) == Counter(made)  # and what it added arrived


# --- 4. TLS ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls() -> TLSMaterial:
    return make_tls_material()


def server_credentials(tls: TLSMaterial) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials([(tls.server.key, tls.server.cert)])


def test_a_health_checked_sync_pool_connects_over_tls_each_channel_its_own_connection(
    pool_name: str, tls: TLSMaterial
) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=tls.ca)
    with (
        sync_fleet(1, credentials=server_credentials(tls)) as ([backend], _),
        # health-checked: each channel's Health/Watch goes over a grpc.aio channel of its
        # own, which must take the credentials too, or the pool never serves
        running(
            pool_name,
            backend.address,
            3,
            channel={"credentials": credentials, "health_check": ""},
        ),
    ):
        assert sync.Pool.status(pool_name).current_size == 3
        peers = {
            raw(sync.Pool.get_channel(pool_name), "unary_unary", PEER_METHOD)(b"", timeout=5)
            for _ in range(3)
        }
        assert len(peers) == 3
        pooled = raw(sync.Pool.channel(pool_name), "unary_unary", SLEEP_METHOD)
        assert pooled(b"1", timeout=5) == str(backend.port).encode()
        assert established_sockets(backend.port) == 6  # a call connection and a health one each


def test_a_sync_pool_with_the_wrong_ca_says_the_tls_failure_everywhere(
    pool_name: str, tls: TLSMaterial
) -> None:
    wrong_ca = grpc.ssl_channel_credentials(root_certificates=tls.other_ca)
    with (
        recording([CONNECTION_FAILED]) as events,
        sync_fleet(1, credentials=server_credentials(tls)) as ([backend], _),
        running(pool_name, backend.address, 2, wait=False, channel={"credentials": wrong_ca}),
    ):
        wait_until_sync(lambda: len(events.of("connection_failed")) >= 2)
        reasons = [meta["reason"] for meta in events.of("connection_failed")]
        assert all("CERTIFICATE_VERIFY_FAILED" in reason for reason in reasons), reasons
        assert "handshake failed" in reasons[0].lower()
        with pytest.raises(NotConnectedError, match="CERTIFICATE_VERIFY_FAILED"):
            sync.Pool.get_channel(pool_name)
        with pytest.raises(NotConnectedError, match="CERTIFICATE_VERIFY_FAILED"):
            sync.Pool.wait_connected(pool_name, timeout=0.1)
        with pytest.raises(grpc.RpcError) as failed:
            raw(sync.Pool.channel(pool_name), "unary_unary", PEER_METHOD)(b"", timeout=5)
        assert failed.value.code() is UNAVAILABLE
        assert "CERTIFICATE_VERIFY_FAILED" in (failed.value.details() or "")
        assert sync.Pool.status(pool_name).current_size == 0
        assert backend.calls == 0
        print(f"wrong CA: {reasons[0]}")


# --- 5. max_calls_per_channel -------------------------------------------------------------------


def admission(name: str) -> ThreadAdmission:
    runtime = thread_pools.get(name)
    assert runtime is not None
    return runtime.admission  # type: ignore[return-value]


def test_under_a_cap_of_two_no_channel_carries_more_and_every_call_is_answered(
    pool_name: str,
) -> None:
    """Ten threads, two 200 ms calls each, through a pool of 2 capped at 2 a channel."""
    with (
        sync_fleet(1) as ([backend], _),
        running(pool_name, backend.address, 2, max_calls_per_channel=2),
    ):
        sleep = raw(sync.Pool.channel(pool_name), "unary_unary", SLEEP_METHOD)
        done = threading.Event()
        most_by_channel: Counter[int] = Counter()
        most_at_server = 0

        def watch() -> None:
            nonlocal most_at_server
            while not done.is_set():
                for index, calls in sync.Pool.status(pool_name).in_flight_by_channel.items():
                    most_by_channel[index] = max(most_by_channel[index], calls)
                most_at_server = max(most_at_server, backend.in_flight)
                time.sleep(0.001)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            answers = in_parallel(10, lambda _: [sleep(b"200", timeout=30) for _ in range(2)])
        finally:
            done.set()
            watcher.join(WAIT_LIMIT)
        assert answers == [[str(backend.port).encode()] * 2] * 10
        assert most_by_channel == {0: 2, 1: 2}  # at the cap, never over it
        assert most_at_server == 4
        assert backend.calls == 20
        wait_until_sync(lambda: all_counts_zero(pool_name))


@contextmanager
def full_pool(name: str) -> Iterator[tuple[Backend, Any, list[Any]]]:
    """A pool of 2 capped at 2 calls a channel, filled by four long calls: its server, its
    pooled ``Sleep``, and the calls that fill it (and any the test adds), cancelled at
    the end."""
    with (
        sync_fleet(1) as ([backend], _),
        running(name, backend.address, 2, max_calls_per_channel=2),
    ):
        sleep = raw(sync.Pool.channel(name), "unary_unary", SLEEP_METHOD)
        holds = [sleep.future(b"10000", timeout=30) for _ in range(4)]
        wait_until_sync(lambda: backend.in_flight == 4)  # they reached the server
        try:
            yield backend, sleep, holds
        finally:
            for hold in holds:
                hold.cancel()
        wait_until_sync(lambda: all_counts_zero(name))


def queue_up(
    name: str, count: int, pooled: grpc.Channel
) -> tuple[list[Any], list[threading.Thread]]:
    """``count`` calls that wait for room in pool ``name``, each made once the one before
    waits: first come, first served, in that order. Even ones are futures (they return at
    once and wait on the pool's thread), odd ones response streams (they wait in a thread
    of their own before they return). Each carries its place in metadata (``CALL_ID``).
    The calls, in their places (each once it returned), and the streams' threads."""
    calls: list[Any] = [None] * count
    threads = []
    count_method = raw(pooled, "unary_stream", COUNT_METHOD)
    sleep = raw(pooled, "unary_unary", SLEEP_METHOD)
    for index in range(count):
        metadata = ((CALL_ID, f"q{index}"),)
        if index % 2 == 0:
            calls[index] = sleep.future(b"10000", timeout=30, metadata=metadata)
        else:

            def stream(index: int = index, metadata: Any = metadata) -> None:
                calls[index] = count_method(b"1000:10", timeout=30, metadata=metadata)

            thread = threading.Thread(target=stream)
            thread.start()
            threads.append(thread)
        wait_until_sync(lambda n=index + 1: len(admission(name).waiting) == n)
    return calls, threads


def test_calls_waiting_for_room_start_first_come_first_served(pool_name: str) -> None:
    """Four long calls fill a pool of 2 capped at 2; six more queue, one after the other,
    futures and streams in turn; each room freed then goes to the oldest waiting call,
    and only to it."""
    with full_pool(pool_name) as (backend, _, holds):
        queued, threads = queue_up(pool_name, 6, sync.Pool.channel(pool_name))
        try:
            assert backend.calls == 4  # none was sent
            for freed in range(6):  # the fills first, then the calls that took room
                if freed >= 4:  # a stream that took room returns in its thread
                    wait_until_sync(lambda i=freed - 4: queued[i] is not None)
                (holds + queued)[freed].cancel()
                wait_until_sync(lambda n=freed + 1: len(ids_seen(backend, prefix="q")) == n)
                assert len(admission(pool_name).waiting) == 5 - freed
            assert ids_seen(backend, prefix="q") == [f"q{i}" for i in range(6)]
        finally:
            for thread in threads:
                thread.join(WAIT_LIMIT)
            for call in queued:
                if call is not None:
                    call.cancel()


def test_rooms_freed_at_once_all_go_to_the_calls_waiting(pool_name: str) -> None:
    """Four rooms free together while four calls wait: each call that takes one wakes
    the next, so none waits on while a room is free."""
    with full_pool(pool_name) as (backend, _, holds):
        queued, threads = queue_up(pool_name, 4, sync.Pool.channel(pool_name))
        for fill in holds:
            fill.cancel()
        try:
            wait_until_sync(lambda: backend.calls == 8)  # the four that waited were sent
            assert sorted(ids_seen(backend, prefix="q")) == [f"q{i}" for i in range(4)]
        finally:
            for thread in threads:
                thread.join(WAIT_LIMIT)
            for call in queued:
                if call is not None:
                    call.cancel()


def test_a_call_whose_deadline_passes_while_it_waits_for_room_fails_naming_the_cap(
    pool_name: str,
) -> None:
    with full_pool(pool_name) as (backend, sleep, holds):
        began = time.monotonic()
        with pytest.raises(grpc.RpcError) as late:
            sleep(b"0", timeout=0.3)
        assert time.monotonic() - began >= 0.3
        assert late.value.code() is DEADLINE_EXCEEDED
        assert "max_calls_per_channel=2" in (late.value.details() or "")
        # a future waits the same way (on the pool's thread), and fails in what it returns
        future = sleep.future(b"0", timeout=0.2)
        assert future.code() is DEADLINE_EXCEEDED
        assert "max_calls_per_channel=2" in (future.details() or "")
        assert backend.calls == 4  # neither was sent
        assert sync.Pool.status(pool_name).in_flight == 4

        # a call that gives up at the head of the queue leaves the next one served
        outcomes: dict[str, object] = {}

        def first() -> None:
            try:
                sleep(b"0", timeout=0.5)
            except grpc.RpcError as error:
                outcomes["first"] = error.code()

        def second() -> None:
            outcomes["second"] = sleep(b"0", timeout=30)

        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        threads[0].start()
        wait_until_sync(lambda: len(admission(pool_name).waiting) == 1)
        threads[1].start()
        wait_until_sync(lambda: "first" in outcomes)
        assert outcomes == {"first": DEADLINE_EXCEEDED}
        holds[0].cancel()
        for thread in threads:
            thread.join(WAIT_LIMIT)
        assert outcomes["second"] == str(backend.port).encode()
