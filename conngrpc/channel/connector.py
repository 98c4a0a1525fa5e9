"""Connectors turn a ChannelConfig into a channel that is READY; the default uses grpc.aio."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, cast

import anyio
import grpc
import grpc.aio

from .._tasks import reraise_if_cancelled
from ..errors import ConnectFailedError
from .config import ChannelConfig

__all__ = [
    "DEFAULT_OPTIONS",
    "PROBE_METHOD",
    "channel_options",
    "connect_grpc",
    "raw_unary",
    "raw_unary_stream",
]

_READY = grpc.ChannelConnectivity.READY
_FAILED = grpc.ChannelConnectivity.TRANSIENT_FAILURE
_SHUTDOWN = grpc.ChannelConnectivity.SHUTDOWN

#: conngrpc's channel arguments, safe against any server; ``options`` override them.
#: grpc's client idle timeout (30 minutes) would drop an idle pooled channel's
#: connection, so it is switched off. No keepalive pings are sent by default: a
#: default grpc server answers pings on idle connections sent more often than every
#: 5 minutes with GOAWAY ``too_many_pings``. Opt into fast detection of silent peers
#: through ``options`` (see the Reliability page, "Recommended keepalive settings").
DEFAULT_OPTIONS: tuple[tuple[str, Any], ...] = (("grpc.client_idle_timeout_ms", 2**31 - 1),)

#: The channel argument that gives every channel its own connection. grpc shares one
#: connection between channels with the same target and arguments, so a pool of
#: naive channels would sit on a single socket.
CHANNEL_ID_OPTION = "conngrpc.channel_id"

_channel_ids = itertools.count(1)

# A method no server implements: calling it on a channel in TRANSIENT_FAILURE fails at
# once with grpc's own account of why the last connection attempt failed.
PROBE_METHOD = "/conngrpc.internal.v1.ConnectProbe/Why"


def channel_options(config: ChannelConfig) -> list[tuple[str, Any]]:
    """The defaults, overridden by ``config.options``, plus a fresh channel id.

    grpc keeps a connection attempt going for its own minimum connect timeout (20 s)
    even after the channel is closed, holding a socket; conngrpc gives up on an attempt
    after ``connect_timeout``, so grpc's attempt is bounded by the same time.
    """
    timeout_ms = max(1, round(config.connect_timeout * 1000))
    merged = dict(DEFAULT_OPTIONS)
    merged["grpc.min_reconnect_backoff_ms"] = timeout_ms
    merged["grpc.initial_reconnect_backoff_ms"] = timeout_ms
    merged.update(config.options)
    merged[CHANNEL_ID_OPTION] = next(_channel_ids)
    return list(merged.items())


async def connect_grpc(config: ChannelConfig) -> grpc.aio.Channel:
    """The default connector: a grpc.aio channel that owns its connection, once READY.

    :raises ConnectFailedError: the channel reached TRANSIENT_FAILURE; the message is
        grpc's reason (refused, unresolvable host, TLS failure, ...).

    An exception from grpc while the channel is built (rather than connected) is not
    caught: the settings can never work, and ChannelConfig checks them where they are
    written, so it is a bug to report, not a failure to retry.
    """
    options = channel_options(config)
    # grpc.aio's own, which the pool's child_spec checked (check_interceptors_for)
    interceptors = cast("list[grpc.aio.ClientInterceptor]", list(config.interceptors)) or None
    if config.credentials is None:
        channel = grpc.aio.insecure_channel(
            config.address, options, config.compression, interceptors
        )
    else:
        channel = grpc.aio.secure_channel(
            config.address,
            config.credentials,
            options,
            config.compression,
            interceptors,
        )
    try:
        state = channel.get_state(try_to_connect=True)
        while state is not _READY:
            if state is _FAILED:
                raise ConnectFailedError(config.address, await _why_failed(channel))
            if state is _SHUTDOWN:
                raise ConnectFailedError(config.address, "the channel was shut down")
            await channel.wait_for_state_change(state)
            state = channel.get_state(try_to_connect=True)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await channel.close()
        raise
    return channel


async def _why_failed(channel: grpc.aio.Channel) -> str:
    try:
        await raw_unary(channel, PROBE_METHOD)(b"", timeout=1.0)
    except grpc.aio.AioRpcError as error:
        if error.code() is grpc.StatusCode.UNAVAILABLE:
            return error.details() or "UNAVAILABLE"
        return f"{error.code().name}: {error.details()}"
    except asyncio.CancelledError:
        await reraise_if_cancelled()
        return "TRANSIENT_FAILURE (grpc cancelled the call that would have said why)"
    return "TRANSIENT_FAILURE"


def raw_unary(
    channel: grpc.aio.Channel, method: str
) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    """A unary call of ``method`` that sends and receives raw bytes (no generated code)."""
    return channel.unary_unary(method, request_serializer=_as_is, response_deserializer=_as_is)


def raw_unary_stream(
    channel: grpc.aio.Channel, method: str
) -> grpc.aio.UnaryStreamMultiCallable[bytes, bytes]:
    """A server-streaming call of ``method`` in raw bytes (no generated code)."""
    return channel.unary_stream(method, request_serializer=_as_is, response_deserializer=_as_is)


def _as_is(data: bytes) -> bytes:
    return data
