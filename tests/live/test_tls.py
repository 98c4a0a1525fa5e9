"""The Pool over TLS and mutual TLS, against grpc.aio servers in the test's event loop.

The certificates are made at test time (``tests._certs``). A rejected handshake is a
failed connection attempt like any other: reported with grpc's reason, never handed
out, retried with backoff, never a crash. Credentials never reach logs or telemetry.
"""

from __future__ import annotations

import ast
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from conngrpc import ChannelConfig, NotConnectedError, Pool, Supervisor
from conngrpc._server import _handlers, peer_of
from tests._certs import KeyPair, TLSMaterial, make_tls_material
from tests._logs import capture_logs
from tests._net import established_sockets
from tests._pools import LIVE_BACKOFF, live_pool
from tests._probe import SUPERVISOR_EVENTS, EventLog, recording, wait_until

pytestmark = pytest.mark.anyio

#: A bearer token no code path could produce by accident.
TOKEN = "tok-5ecret-b3arer-9d41c7e2a08f"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "telemetry.md"


@pytest.fixture(scope="session")
def tls() -> TLSMaterial:
    return make_tls_material()


class MetadataRecorder(grpc.aio.ServerInterceptor):
    """Keeps the invocation metadata of every call the server receives."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | bytes]] = []

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        self.seen.extend(handler_call_details.invocation_metadata or ())
        return await continuation(handler_call_details)


@asynccontextmanager
async def tls_server(
    identity: KeyPair,
    *,
    client_ca: bytes | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> AsyncIterator[tuple[grpc.aio.Server, str]]:
    """conngrpc's test server on 127.0.0.1 over TLS; with ``client_ca``, mutual TLS."""
    server = grpc.aio.server(interceptors=interceptors, options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers(_handlers())
    credentials = grpc.ssl_server_credentials(
        [(identity.key, identity.cert)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    assert port != 0
    await server.start()
    try:
        yield server, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def peers_of_every_channel(name: str) -> list[str]:
    return [await peer_of(worker.channel) for worker in Pool.get_all_workers(name)]  # type: ignore[arg-type]


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def documented_events() -> list[tuple[str, ...]]:
    headings = re.findall(r"^### `(\(.*\))`$", DOCS.read_text(), re.MULTILINE)
    return [ast.literal_eval(heading) for heading in headings]


async def assert_rejected_and_backing_off(
    name: str, channel_events: EventLog, sup: Supervisor, *reasons: str
) -> str:
    """The pool keeps failing for one of ``reasons``, hands nothing out, crashes nothing."""
    with recording(SUPERVISOR_EVENTS) as supervisor_events:
        await wait_until(lambda: len(channel_events.of("connection_failed")) >= 3)
        with pytest.raises(NotConnectedError):
            Pool.get_channel(name)
        assert Pool.status(name).current_size == 0
        assert sup.which_children()[0].running
    seen = [m["reason"] for m in channel_events.of("connection_failed")]
    assert all(any(reason in text for reason in reasons) for text in seen), seen
    assert channel_events.of("connected") == []
    assert supervisor_events.of("child_restarted") == []
    return str(seen[0])


async def test_a_tls_pool_connects_and_every_channel_has_its_own_connection(
    pool_name: str, tls: TLSMaterial
) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=tls.ca)
    async with (
        tls_server(tls.server) as (_, address),
        live_pool(pool_name, address, 3, credentials=credentials),
    ):
        await Pool.wait_connected(pool_name, timeout=5)
        peers = await peers_of_every_channel(pool_name)
        assert len(set(peers)) == 3
        assert established_sockets(port_of(address)) == 3


async def test_a_mutual_tls_pool_with_a_client_certificate_connects(
    pool_name: str, tls: TLSMaterial
) -> None:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.ca, private_key=tls.client.key, certificate_chain=tls.client.cert
    )
    async with (
        tls_server(tls.server, client_ca=tls.ca) as (_, address),
        live_pool(pool_name, address, 2, credentials=credentials),
    ):
        await Pool.wait_connected(pool_name, timeout=5)
        assert len(set(await peers_of_every_channel(pool_name))) == 2


async def test_mutual_tls_without_a_client_certificate_never_connects(
    pool_name: str, tls: TLSMaterial, channel_events: EventLog
) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=tls.ca)
    async with (
        tls_server(tls.server, client_ca=tls.ca) as (_, address),
        live_pool(pool_name, address, 1, credentials=credentials) as sup,
    ):
        # The client learns only that the server closed the connection: TLS 1.3
        # rejects the missing certificate after the client's side of the handshake.
        reason = await assert_rejected_and_backing_off(
            pool_name, channel_events, sup, "Socket closed", "Connection reset by peer"
        )
    assert address in reason
    print(f"missing client certificate: {reason}")


async def test_a_server_certificate_from_another_ca_fails_with_a_verify_failure(
    pool_name: str, tls: TLSMaterial, channel_events: EventLog
) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=tls.other_ca)
    async with (
        tls_server(tls.server) as (_, address),
        live_pool(pool_name, address, 1, credentials=credentials) as sup,
    ):
        reason = await assert_rejected_and_backing_off(
            pool_name, channel_events, sup, "CERTIFICATE_VERIFY_FAILED"
        )
    assert "handshake failed" in reason.lower()
    print(f"wrong CA: {reason}")


@pytest.mark.parametrize("mismatch", ["misnamed certificate", "target name override"])
async def test_a_server_certificate_for_another_host_fails_hostname_verification(
    pool_name: str, tls: TLSMaterial, channel_events: EventLog, mismatch: str
) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=tls.ca)
    if mismatch == "misnamed certificate":  # only SAN: other.example; we dial 127.0.0.1
        identity, options = tls.misnamed_server, []
    else:  # the certificate is for localhost and 127.0.0.1; we expect other.example
        identity, options = tls.server, [("grpc.ssl_target_name_override", "other.example")]
    async with (
        tls_server(identity) as (_, address),
        live_pool(pool_name, address, 1, credentials=credentials, options=options) as sup,
    ):
        reason = await assert_rejected_and_backing_off(
            pool_name, channel_events, sup, "Hostname Verification Check failed"
        )
    print(f"wrong host ({mismatch}): {reason}")


async def test_a_bearer_token_reaches_the_server_but_no_log_event_or_repr(
    pool_name: str,
    tls: TLSMaterial,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    token = grpc.access_token_call_credentials(TOKEN)
    good = grpc.composite_channel_credentials(grpc.ssl_channel_credentials(tls.ca), token)
    wrong_ca = grpc.composite_channel_credentials(grpc.ssl_channel_credentials(tls.other_ca), token)
    wrong_ca_pool = f"{pool_name}-wrong-ca"
    metadata = MetadataRecorder()
    caplog.set_level(logging.DEBUG)

    with capture_logs() as logs, recording(documented_events()) as events:
        async with tls_server(tls.server, interceptors=[metadata]) as (server, address):
            config = ChannelConfig(address, credentials=good, debug=True, backoff=LIVE_BACKOFF)
            bad_config = ChannelConfig(
                address, credentials=wrong_ca, debug=True, backoff=LIVE_BACKOFF
            )
            specs = [
                Pool.child_spec(
                    name=pool_name, pool_size=2, channel=config, telemetry_interval=0.02
                ),
                Pool.child_spec(
                    name=wrong_ca_pool, pool_size=1, channel=bad_config, telemetry_interval=0.02
                ),
            ]
            async with Supervisor(specs):
                await Pool.wait_connected(pool_name, timeout=5)
                for _ in range(4):
                    await peer_of(Pool.get_channel(pool_name))
                with pytest.raises(NotConnectedError):
                    Pool.get_channel(wrong_ca_pool)
                await wait_until(lambda: len(events.of("connection_failed")) >= 2)
                await wait_until(lambda: len(events.of("status")) >= 2)
                await server.stop(None)  # the good pool loses its connections, then is refused
                await wait_until(lambda: Pool.status(pool_name).current_size == 0)
                await wait_until(
                    lambda: any(m["pool_name"] == pool_name for m in events.of("connection_failed"))
                )

    # The token was really sent, so its absence below means something.
    assert metadata.seen.count(("authorization", f"Bearer {TOKEN}")) >= 4
    # Every kind of record was captured, so the search below covered them.
    assert {"connected", "connection_failed", "disconnected", "get_channel", "status"} <= {
        event[-1] for event, _, _ in events.events
    }
    assert {"channel connected", "channel connection failed", "channel disconnected"} <= {
        entry["event"] for entry in logs
    }

    for entry in logs:
        assert TOKEN not in repr(entry), entry
    for event, measurements, meta in events.events:
        text = repr(measurements) + repr(meta) + "".join(map(str, measurements.values()))
        assert TOKEN not in text, (event, measurements, meta)
    assert TOKEN not in caplog.text
    out, err = capfd.readouterr()
    assert TOKEN not in out + err
    assert TOKEN not in repr(config)
    assert TOKEN not in repr(bad_config)
