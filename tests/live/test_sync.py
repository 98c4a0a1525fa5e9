"""conngrpc.sync against real servers: pools of grpc sync channels, called from threads.

The servers run on an event loop of their own thread (tests/_sync_fleet.py), or in a
child process where a test kills them; the test's body blocks as a sync program's does.
Each test checks from the servers' side where connections and calls went.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest

import conngrpc
from conngrpc import ChannelConfig, NotConnectedError, PoolNotStartedError, sync
from conngrpc._server import PEER_METHOD, SLEEP_METHOD, ServerProcess
from conngrpc.errors import SupervisorNotRunningError
from tests._fleet import COLLECT_METHOD, COUNT_METHOD, ECHO_METHOD, NOT_SERVING, SERVING
from tests._net import closed_port
from tests._pools import LIVE_BACKOFF
from tests._probe import WAIT_LIMIT, wait_until_sync
from tests._sync_fleet import ServerLoop, sync_fleet

OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def raw(channel: grpc.Channel, kind: str, method: str) -> Any:
    return getattr(channel, kind)(method, request_serializer=None, response_deserializer=None)


@contextmanager
def running(
    name: str, address: str, size: int, *, wait: bool = True, **settings: Any
) -> Iterator[sync.Supervisor]:
    """Sync pool ``name`` to ``address`` under a sync Supervisor of its own, for the block."""
    channel = {"address": address, "backoff": LIVE_BACKOFF, "connect_timeout": 2.0}
    channel.update(settings.pop("channel", {}))
    spec = sync.Pool.child_spec(name=name, pool_size=size, channel=channel, **settings)
    with sync.Supervisor([spec]) as supervisor:
        if wait:
            sync.Pool.wait_connected(name, timeout=WAIT_LIMIT)
        yield supervisor


def in_parallel(count: int, work: Any) -> list[Any]:
    """Run ``work(i)`` in ``count`` threads at once; their results, in order."""
    results: list[Any] = [None] * count
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def run(index: int) -> None:
        try:
            start.wait(WAIT_LIMIT)
            results[index] = work(index)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_LIMIT * 4)
    assert not any(thread.is_alive() for thread in threads), "a caller hung"
    if errors:
        raise errors[0]
    return results


# --- connected at start, each channel its own connection ----------------------------------


def test_a_sync_pool_is_connected_when_it_starts_each_channel_its_own_connection(
    pool_name: str,
) -> None:
    with sync_fleet(1) as ([backend], _), running(pool_name, backend.address, 4):
        status = sync.Pool.status(pool_name)
        assert (status.expected_size, status.current_size) == (4, 4)
        channels = {id(sync.Pool.get_channel(pool_name)) for _ in range(8)}
        assert len(channels) == 4
        for _ in range(8):
            channel = sync.Pool.get_channel(pool_name)
            assert isinstance(channel, grpc.Channel)
            raw(channel, "unary_unary", PEER_METHOD)(b"", timeout=5)
        assert len(backend.peers) == 4  # four connections, seen by the server


def test_a_declared_sync_pool_is_used_by_its_class(pool_name: str) -> None:
    with sync_fleet(1) as ([backend], _):

        class Declared(
            sync.Pool, name=pool_name, pool_size=2, channel={"address": backend.address}
        ):
            pass

        stub = raw(Declared.channel(), "unary_unary", PEER_METHOD)  # built before it runs
        with sync.Supervisor([Declared]):
            assert Declared.wait_connected(timeout=WAIT_LIMIT).current_size == 2
            assert stub(b"", timeout=5).startswith(str(backend.port).encode())
            assert Declared.status().in_flight == 0


# --- the four kinds of call, with_call, future -------------------------------------------


def test_every_kind_of_call_goes_through_the_pooled_channel_and_is_counted(
    pool_name: str,
) -> None:
    with sync_fleet(1) as ([backend], _), running(pool_name, backend.address, 2):
        pooled = sync.Pool.channel(pool_name)
        assert raw(pooled, "unary_unary", PEER_METHOD)(b"", timeout=5).startswith(
            b"%d|" % backend.port
        )
        response, call = raw(pooled, "unary_unary", SLEEP_METHOD).with_call(b"1", timeout=5)
        assert (response, call.code()) == (str(backend.port).encode(), OK)
        assert list(raw(pooled, "unary_stream", COUNT_METHOD)(b"3:1", timeout=5)) == [
            b"0",
            b"1",
            b"2",
        ]
        assert raw(pooled, "stream_unary", COLLECT_METHOD)(iter([b"a"] * 5), timeout=5) == b"5"
        echoed = raw(pooled, "stream_stream", ECHO_METHOD)(iter([b"x", b"y"]), timeout=5)
        assert list(echoed) == [b"x", b"y"]
        wait_until_sync(lambda: sync.Pool.status(pool_name).in_flight == 0)
        assert backend.calls == 5


def test_a_future_answers_with_its_callbacks_and_counts_until_done(pool_name: str) -> None:
    with sync_fleet(1) as ([backend], _), running(pool_name, backend.address, 2):
        sleep = raw(sync.Pool.channel(pool_name), "unary_unary", SLEEP_METHOD)
        done = threading.Event()
        future = sleep.future(b"300", timeout=5)
        future.add_done_callback(lambda _: done.set())
        assert sync.Pool.status(pool_name).in_flight == 1
        assert done.wait(WAIT_LIMIT)
        assert future.result() == str(backend.port).encode()
        assert future.code() is OK
        wait_until_sync(lambda: sync.Pool.status(pool_name).in_flight == 0)


def test_a_stream_left_unread_is_counted_until_grpc_cancels_it(pool_name: str) -> None:
    with sync_fleet(1) as ([backend], _), running(pool_name, backend.address, 1):
        stream = raw(sync.Pool.channel(pool_name), "unary_stream", COUNT_METHOD)(
            b"1000:10", timeout=30
        )
        assert next(stream) == b"0"
        assert sync.Pool.status(pool_name).in_flight == 1
        stream.cancel()
        wait_until_sync(lambda: sync.Pool.status(pool_name).in_flight == 0)
        assert stream.code() is grpc.StatusCode.CANCELLED


# --- the least-loaded pick --------------------------------------------------------------


def test_calls_from_many_threads_spread_evenly_and_counts_end_at_zero(pool_name: str) -> None:
    with sync_fleet(1) as ([backend], _), running(pool_name, backend.address, 4):
        sleep = raw(sync.Pool.channel(pool_name), "unary_unary", SLEEP_METHOD)
        seen: list[dict[int, int]] = []

        def call(index: int) -> bytes:
            if index == 0:  # one caller looks while the others' calls run
                wait_until_sync(lambda: sync.Pool.status(pool_name).in_flight >= 39)
                seen.append(dict(sync.Pool.status(pool_name).in_flight_by_channel))
            return sleep(b"400", timeout=10)  # type: ignore[no-any-return]

        in_parallel(40, call)
        # 39 calls over 4 channels, least loaded first: 9 or 10 on each
        assert sorted(seen[0].values()) in ([9, 10, 10, 10], [10, 10, 10, 10])
        status = sync.Pool.status(pool_name)
        assert status.in_flight == 0
        assert set(status.in_flight_by_channel.values()) == {0}


def test_a_slow_replica_gets_fewer_calls_than_round_robin_would_send_it(pool_name: str) -> None:
    with sync_fleet(2) as (backends, _):
        slow = ServerProcess(args=["--stall", "--fail-percent", "100", "--fail-after-ms", "150"])
        with slow:
            target = "ipv4:" + ",".join([b.address for b in backends] + [slow.address])
            with running(pool_name, target, 6):
                sleep = raw(sync.Pool.channel(pool_name), "unary_unary", SLEEP_METHOD)
                answers = in_parallel(12, lambda _: [sleep(b"10", timeout=10) for _ in range(15)])
        by_backend = Counter(answer for batch in answers for answer in batch)
        fast = sum(by_backend[str(b.port).encode()] for b in backends)
        assert fast >= 0.8 * 180  # round-robin would send the slow one a third


# --- replicas, failures and recovery -----------------------------------------------------


def test_a_sync_pool_spreads_over_the_replicas(pool_name: str) -> None:
    with sync_fleet(3) as (backends, _):
        target = "ipv4:" + ",".join(b.address for b in backends)
        with running(pool_name, target, 6):
            assert sorted(sync.Pool.status(pool_name).backends.values()) == [2, 2, 2]


def test_a_killed_server_leaves_the_pick_and_the_pool_reconnects_when_it_returns(
    pool_name: str,
) -> None:
    with ServerProcess() as server, running(pool_name, server.address, 3):
        peer = raw(sync.Pool.channel(pool_name), "unary_unary", PEER_METHOD)
        assert peer(b"", timeout=5)
        server.kill()
        wait_until_sync(lambda: sync.Pool.status(pool_name).current_size == 0)
        with pytest.raises(NotConnectedError, match="none of its 3 channel"):
            sync.Pool.get_channel(pool_name)
        began = time.monotonic()
        with pytest.raises(grpc.RpcError) as failed:
            peer(b"", timeout=30)  # fails at once: the pool's channels failed
        assert failed.value.code() is UNAVAILABLE
        assert f"conngrpc.sync pool {pool_name!r}" in (failed.value.details() or "")
        assert time.monotonic() - began < 30
        server.start()
        assert sync.Pool.wait_connected(pool_name, timeout=20).current_size == 3
        assert peer(b"", timeout=5)


def test_a_call_made_before_the_pool_runs_waits_for_it_with_wait_for_ready(
    pool_name: str,
) -> None:
    with sync_fleet(1) as ([backend], _):
        peer = raw(sync.Pool.channel(pool_name), "unary_unary", PEER_METHOD)
        with pytest.raises(grpc.RpcError) as failed:
            peer(b"", timeout=5)
        assert failed.value.code() is UNAVAILABLE
        assert "no conngrpc.sync pool of that name is running" in (failed.value.details() or "")
        answers: list[bytes] = []
        caller = threading.Thread(
            target=lambda: answers.append(peer(b"", timeout=30, wait_for_ready=True))
        )
        caller.start()
        with running(pool_name, backend.address, 1, wait=False):
            caller.join(WAIT_LIMIT * 4)
        assert len(answers) == 1
        assert answers[0].startswith(b"%d|" % backend.port)


def test_a_future_made_while_no_channel_is_connected_returns_at_once(pool_name: str) -> None:
    """grpc's future() never blocks: while the pool has no channel, the pool's thread
    sends the call once one joins, within its deadline."""
    port = closed_port()
    servers = ServerLoop()
    try:
        with running(pool_name, f"127.0.0.1:{port}", 1, wait=False):
            peer = raw(sync.Pool.channel(pool_name), "unary_unary", PEER_METHOD)
            future = peer.future(b"", timeout=30, wait_for_ready=True)
            done: list[Any] = []
            future.add_done_callback(done.append)
            assert not future.done()  # returned before any channel joined
            backend = servers.start(port=port)
            assert future.result(timeout=20).startswith(b"%d|" % backend.port)
            assert future.code() is OK
            wait_until_sync(lambda: done == [future])
            wait_until_sync(lambda: sync.Pool.status(pool_name).in_flight == 0)
            servers.stop(backend)
    finally:
        servers.close()


def test_a_backend_failing_every_call_is_ejected(pool_name: str) -> None:
    with sync_fleet(2) as (backends, _):
        bad = ServerProcess(args=["--fail", "INTERNAL"])
        with bad:
            target = "ipv4:" + ",".join([b.address for b in backends] + [bad.address])
            with running(pool_name, target, 6):
                sleep = raw(sync.Pool.channel(pool_name), "unary_unary", SLEEP_METHOD)
                failed = 0
                for _ in range(200):
                    try:
                        sleep(b"0", timeout=5)
                    except grpc.RpcError:
                        failed += 1
                assert bad.address in sync.Pool.status(pool_name).ejected
                assert 0 < failed < 20  # five in a row eject it (the default rules)


def test_health_checked_channels_leave_while_not_serving(pool_name: str) -> None:
    with (
        sync_fleet(1) as ([backend], servers),
        running(pool_name, backend.address, 2, channel={"health_check": ""}),
    ):
        servers.set_health(backend, NOT_SERVING)
        wait_until_sync(lambda: sync.Pool.status(pool_name).current_size == 0)
        servers.set_health(backend, SERVING)
        assert sync.Pool.wait_connected(pool_name, timeout=WAIT_LIMIT).current_size == 2


# --- the supervisor and its thread --------------------------------------------------------


def test_a_sync_supervisor_runs_one_thread_whatever_the_pools_size(pool_name: str) -> None:
    """100 channels, called from 20 threads: the pool adds its supervisor's thread to
    the process, and no thread per channel (grpc's subscribe would run one each)."""
    with sync_fleet(1) as ([backend], _):
        before = set(threading.enumerate())
        with running(pool_name, backend.address, 100):
            sleep = raw(sync.Pool.channel(pool_name), "unary_unary", SLEEP_METHOD)
            in_parallel(20, lambda _: sleep(b"5", timeout=10))
            added = [thread.name for thread in set(threading.enumerate()) - before]
            assert len(added) == 1, added
            assert added[0].startswith("conngrpc.sync supervisor-")
        wait_until_sync(lambda: set(threading.enumerate()) <= before)


@pytest.mark.parametrize("through", ["pooled channel", "handed-out channel"])
def test_stopping_lets_a_call_in_flight_finish_then_closes(pool_name: str, through: str) -> None:
    with sync_fleet(1) as ([backend], _):
        spec = sync.Pool.child_spec(
            name=pool_name, pool_size=1, channel={"address": backend.address}
        )
        supervisor = sync.Supervisor([spec]).start()
        sync.Pool.wait_connected(pool_name, timeout=WAIT_LIMIT)
        if through == "pooled channel":
            channel = sync.Pool.channel(pool_name)
        else:
            channel = sync.Pool.get_channel(pool_name)
        future = raw(channel, "unary_unary", SLEEP_METHOD).future(b"500", timeout=10)
        wait_until_sync(lambda: backend.in_flight == 1)
        supervisor.stop()  # drains: shutdown_grace is 5 s by default
        assert future.result(timeout=0) == str(backend.port).encode()
        with pytest.raises(PoolNotStartedError):
            sync.Pool.status(pool_name)


def test_the_supervisor_runs_once_and_its_calls_need_it_running(pool_name: str) -> None:
    supervisor = sync.Supervisor([])
    with pytest.raises(SupervisorNotRunningError, match=r"conngrpc\.sync\.Supervisor"):
        supervisor.which_children()
    with supervisor:
        assert supervisor.which_children() == []
        port = closed_port()
        supervisor.start_child(
            sync.Pool.child_spec(
                name=pool_name, pool_size=1, channel={"address": f"127.0.0.1:{port}"}
            )
        )
        assert [child.id for child in supervisor.which_children()] == [pool_name]
        supervisor.terminate_child(pool_name)
        supervisor.delete_child(pool_name)
    with pytest.raises(RuntimeError, match="started only once"):
        supervisor.start()


def test_channel_ready_future_waits_for_the_pool(pool_name: str) -> None:
    with sync_fleet(1) as ([backend], _):
        pooled = sync.Pool.channel(pool_name)
        ready = grpc.channel_ready_future(pooled)
        assert not ready.done()
        with running(pool_name, backend.address, 1, wait=False):
            ready.result(timeout=WAIT_LIMIT)
        assert pooled.get_state() is grpc.ChannelConnectivity.IDLE


# --- what a sync pool refuses, and says why ----------------------------------------------


class _AioInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(details, request)


async def _async_callback() -> None:
    pass


async def _async_connector(config: ChannelConfig) -> grpc.aio.Channel:
    raise AssertionError("never called: refused where it is written")


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        (
            {"channel": {"interceptors": [_AioInterceptor()]}},
            TypeError,
            "grpc's sync client interceptors",
        ),
        (
            {"channel": {"on_connect": _async_callback}},
            TypeError,
            "on_connect: expected a plain function",
        ),
        (
            {"channel": {"connector": _async_connector}},
            TypeError,
            "connector: expected a plain function",
        ),
    ],
)
def test_a_sync_pool_refuses_asyncio_settings_where_they_are_written(
    settings: dict[str, Any], error: type[Exception], message: str
) -> None:
    channel = {"address": "127.0.0.1:1", **settings.pop("channel", {})}
    with pytest.raises(error, match=message):
        sync.Pool.child_spec(name="refused", pool_size=1, channel=channel, **settings)


def test_an_asyncio_pool_refuses_sync_interceptors() -> None:
    class SyncInterceptor(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
        def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            return continuation(details, request)

    config = ChannelConfig("127.0.0.1:1", interceptors=[SyncInterceptor()])
    with pytest.raises(TypeError, match=r"grpc\.aio client interceptors for an asyncio pool"):
        conngrpc.Pool.child_spec(name="refused", pool_size=1, channel=config)


def test_get_channel_of_a_name_no_sync_pool_holds_says_so() -> None:
    with pytest.raises(PoolNotStartedError, match=r"no conngrpc\.sync pool of that name"):
        sync.Pool.get_channel("nobody")
    with pytest.raises(TypeError, match="expected a pool name"):
        sync.Pool.get_channel()


# --- what a cold review found (each failed before its fix) ---------------------------------


def test_a_channel_the_pool_closed_refuses_new_methods_instead_of_crashing(
    pool_name: str,
) -> None:
    """grpc crashes the process when a method is registered on a closed channel (as a
    generated stub does): the pool's closed channels refuse it, as grpc refuses calls."""
    script = f"""
import grpc
from conngrpc import sync
from conngrpc._server import PEER_METHOD, ServerProcess
with ServerProcess() as server:
    spec = sync.Pool.child_spec(name={pool_name!r}, pool_size=1,
                                channel={{"address": server.address, "shutdown_grace": 0}})
    with sync.Supervisor([spec]):
        sync.Pool.wait_connected({pool_name!r})
        held = sync.Pool.get_channel({pool_name!r})
    try:
        held.unary_unary(PEER_METHOD, None, None, True)
    except ValueError as error:
        print("refused:", error)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "refused: Cannot invoke RPC: the conngrpc.sync channel" in result.stdout


def test_stop_called_from_a_calls_done_callback_does_not_wait_for_itself(pool_name: str) -> None:
    """grpc's close() waits for the thread that runs its calls' callbacks: a stop() from
    one (with another call in flight on the channel) must not wait on it for ever."""
    with sync_fleet(1) as ([backend], _):
        spec = sync.Pool.child_spec(
            name=pool_name, pool_size=1, channel={"address": backend.address}
        )
        supervisor = sync.Supervisor([spec]).start()
        sync.Pool.wait_connected(pool_name, timeout=WAIT_LIMIT)
        sleep = raw(sync.Pool.get_channel(pool_name), "unary_unary", SLEEP_METHOD)
        stopped = threading.Event()
        longer = sleep.future(b"300", timeout=10)

        def stop(_: Any) -> None:
            supervisor.stop()
            stopped.set()

        sleep.future(b"1", timeout=10).add_done_callback(stop)
        assert stopped.wait(WAIT_LIMIT * 2), "stop() from a done callback hung"
        assert longer.result(timeout=WAIT_LIMIT) == str(backend.port).encode()


def test_a_stream_interceptor_returning_a_plain_iterator_is_counted_to_its_end(
    pool_name: str,
) -> None:
    class Upper(grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
        def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
            return (message.upper() + b"!" for message in continuation(details, request))

    with (
        sync_fleet(1) as ([backend], _),
        running(pool_name, backend.address, 1, channel={"interceptors": [Upper()]}),
    ):
        for channel in (sync.Pool.channel(pool_name), sync.Pool.get_channel(pool_name)):
            stream = raw(channel, "unary_stream", COUNT_METHOD)(b"2:1", timeout=5)
            assert list(stream) == [b"0!", b"1!"]
        wait_until_sync(lambda: sync.Pool.status(pool_name).in_flight == 0)


def test_a_mocked_pool_answers_a_method_under_a_retry_policy(pool_name: str) -> None:
    answers = {"/conngrpc.demo.v1.Demo/Peer": b"mocked"}

    class Mock:
        def unary_unary(self, method: str, **_: Any) -> Any:
            return lambda request, **__: answers[method]

    config = {
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 2,
                    "initialBackoff": "0.01s",
                    "maxBackoff": "0.01s",
                    "backoffMultiplier": 1,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
    spec = sync.Pool.child_spec(
        name=pool_name,
        pool_size=1,
        channel={"address": "unused:1", "mock": Mock},
        service_config=config,
    )
    with sync.Supervisor([spec]):
        sync.Pool.wait_connected(pool_name, timeout=WAIT_LIMIT)
        assert raw(sync.Pool.channel(pool_name), "unary_unary", PEER_METHOD)(b"") == b"mocked"


def test_calls_take_grpcs_arguments_by_name_and_the_channel_is_a_context_manager(
    pool_name: str,
) -> None:
    with sync_fleet(1) as ([backend], _), running(pool_name, backend.address, 1):
        with sync.Pool.channel(pool_name) as pooled:
            collect = raw(pooled, "stream_unary", COLLECT_METHOD)
            assert collect(request_iterator=iter([b"a", b"b"]), timeout=5) == b"2"
            sleep = raw(pooled, "unary_unary", SLEEP_METHOD)
            assert sleep(b"1", 5, None) == str(backend.port).encode()  # timeout by place
            with pytest.raises(TypeError, match="unexpected keyword argument 'deadline'"):
                sleep(b"1", deadline=5)
        assert pooled.get_state() is grpc.ChannelConnectivity.SHUTDOWN  # closed on exit
        with sync.Pool.get_channel(pool_name) as handed_out:
            assert raw(handed_out, "unary_unary", PEER_METHOD)(b"", timeout=5)
        assert sync.Pool.status(pool_name).current_size == 1  # the pool's stays open


def test_a_declared_sync_pool_reads_its_config_when_its_spec_is_made(pool_name: str) -> None:
    found: dict[str, str] = {}

    class Configured(
        sync.Pool,
        name=pool_name,
        pool_size=2,
        channel={"connect_timeout": 2.0},
        config=lambda: {"channel": {"address": found["address"]}},
    ):
        pass

    with sync_fleet(1) as ([backend], _):
        found["address"] = backend.address  # known only once the application starts
        with sync.Supervisor([Configured]):
            assert Configured.wait_connected(timeout=WAIT_LIMIT).current_size == 2
            assert raw(Configured.channel(), "unary_unary", PEER_METHOD)(b"", timeout=5)
