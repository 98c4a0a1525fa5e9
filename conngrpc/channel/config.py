"""ChannelConfig: everything one persistent channel needs, checked where it is written."""

from __future__ import annotations

import dataclasses
import numbers
import operator
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

import grpc
import grpc.aio

from .._checks import check_seconds
from .backoff import Backoff, ExponentialBackoff
from .target import parse_target

__all__ = [
    "Callback",
    "ChannelConfig",
    "ChannelConfigLike",
    "Connector",
    "SyncInterceptor",
    "check_interceptors_for",
]

#: ``on_connect`` / ``on_disconnect``: a zero-argument callable, sync or async.
Callback = Callable[[], Awaitable[object] | object]

# grpc passes an int channel argument as a C int.
_C_INT = range(-(2**31), 2**31)


class Connector(Protocol):
    """Opens a channel from a config and returns it once it is READY.

    An attempt that may succeed later (the network said no) raises
    :class:`~conngrpc.ConnectFailedError`, ``OSError``, ``TimeoutError`` or a
    ``grpc.RpcError``: the worker reports it and retries after its backoff. Any other
    exception means the attempt can never succeed (a bug, a bad setting): the worker
    crashes, and its supervisor handles that. Either way the connector closes what it
    opened. The worker bounds each call by ``connect_timeout`` and cancels it after.
    """

    def __call__(self, config: ChannelConfig) -> Awaitable[grpc.aio.Channel]:
        """A channel for ``config``, once READY; or the attempt's failure, raised as above."""


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    """How to open, watch and reopen one channel; a plain dict of its fields will do.

    Each field, with its type, default and meaning, is in the table of channel settings
    on the reference's Channels page. Every field is checked when the config is made.
    Example::

        ChannelConfig("localhost:50051", connect_timeout=2.0, health_check="")

    :raises TypeError: a field has the wrong type, or (from :meth:`coerce`) an unknown key.
    :raises ValueError: a field has a value out of range, such as an empty address.
    """

    #: ``host:port`` or any grpc target (``dns:///...``, ``unix:...``); without a port,
    #: grpc dials 443
    address: str
    #: grpc channel arguments as ``(key, value)`` pairs (an int value must fit a C int);
    #: they override conngrpc's defaults: grpc's client idle timeout off
    #: (``grpc.client_idle_timeout_ms``), grpc's own connection attempt bounded by
    #: ``connect_timeout`` (``grpc.initial_reconnect_backoff_ms`` and
    #: ``grpc.min_reconnect_backoff_ms``), and no keepalive pings
    options: Sequence[tuple[str, Any]] = ()
    #: ``grpc.ChannelCredentials`` for TLS; None connects insecurely
    credentials: grpc.ChannelCredentials | None = None
    #: a ``grpc.Compression`` for every call, or None
    compression: grpc.Compression | None = None
    #: ``grpc.aio`` client interceptors (grpc's sync client interceptors for a
    #: ``conngrpc.sync`` pool)
    interceptors: Sequence[grpc.aio.ClientInterceptor | SyncInterceptor] = ()
    #: seconds one connection attempt may take (> 0), after which it counts as failed
    connect_timeout: float = 5.0
    #: seconds (>= 0) calls in flight may take to finish when the pool is stopped (or
    #: the channel replaced), before they are cancelled and the channel closes
    shutdown_grace: float = 5.0
    #: the waits between failed attempts, a :class:`Backoff`; each channel uses its own
    #: copy (and, in a pool spread over several backends, so does each backend that
    #: refused one)
    backoff: Backoff = field(default_factory=ExponentialBackoff)
    #: None (off), or the ``grpc.health.v1`` service name to watch (``""`` for the
    #: server as a whole): a channel is handed out only while ``Health/Watch`` says
    #: SERVING. A server without the health service counts as serving (as grpc's own
    #: client-side health checking does), with one warning.
    health_check: str | None = None
    #: None (never), or seconds (> 0; jittered by up to 10%) after which a channel is
    #: replaced, make
    #: before break: the new one is READY (and SERVING) before the old one leaves and
    #: drains within ``shutdown_grace``
    max_connection_age: float | None = None
    #: a zero-argument callable, sync or async, run after each successful connect,
    #: before the channel is handed out; one that raises crashes the channel's worker,
    #: which its supervisor restarts (a crash counts against ``max_restarts``)
    on_connect: Callback | None = None
    #: as ``on_connect``, run after a connected channel's connection is lost (not when
    #: the pool stops)
    on_disconnect: Callback | None = None
    #: opens the channel for this config and returns it once READY (see
    #: :class:`Connector`); None: conngrpc's own, with grpc.aio (with grpc's sync channels
    #: in a ``conngrpc.sync`` pool)
    connector: Connector | None = None
    #: when given, no connection is opened: ``get_channel`` and ``Channel.get`` answer
    #: ``mock()``, and calls through ``Pool.channel()`` are made on the channel ``mock()``
    #: returns; for tests that must not touch the network
    mock: Callable[[], Any] | None = None
    #: True logs every connect (at debug level) and every failed attempt (at warning
    #: level; otherwise only the first of a streak) on the ``conngrpc.channel`` logger,
    #: each naming its pool, channel and backend
    debug: bool = False

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if not isinstance(self.address, str):
            raise TypeError(f"ChannelConfig.address: expected a str, got {self.address!r}")
        if not self.address.strip():
            raise ValueError(
                "ChannelConfig.address: expected 'host:port' or a grpc target, got an empty string"
            )
        if self.connector is None:  # a custom connector may read addresses its own way
            parse_target(self.address, "ChannelConfig.address")
        set_(self, "options", _check_options(self.options))
        if self.credentials is not None and not isinstance(
            self.credentials, grpc.ChannelCredentials
        ):
            raise TypeError(
                "ChannelConfig.credentials: expected grpc.ChannelCredentials or None, "
                f"got {self.credentials!r}"
            )
        if self.compression is not None and not isinstance(self.compression, grpc.Compression):
            raise TypeError(
                f"ChannelConfig.compression: expected a grpc.Compression or None, "
                f"got {self.compression!r}"
            )
        set_(self, "interceptors", _check_interceptors(self.interceptors))
        check_seconds("ChannelConfig.connect_timeout", self.connect_timeout)
        check_seconds("ChannelConfig.shutdown_grace", self.shutdown_grace, zero=True)
        if isinstance(self.backoff, type):
            raise TypeError(
                "ChannelConfig.backoff: expected a backoff object, got the class "
                f"{self.backoff.__name__}; write {self.backoff.__name__}() instead"
            )
        if not (
            callable(getattr(self.backoff, "next", None))
            and callable(getattr(self.backoff, "reset", None))
        ):
            raise TypeError(
                "ChannelConfig.backoff: expected an object with next() and reset(), "
                f"got {self.backoff!r}"
            )
        if self.health_check is not None and not isinstance(self.health_check, str):
            raise TypeError(
                "ChannelConfig.health_check: expected None or a grpc.health.v1 service name "
                f"('' for the whole server), got {self.health_check!r}"
            )
        if self.max_connection_age is not None:
            check_seconds("ChannelConfig.max_connection_age", self.max_connection_age)
        for name in ("on_connect", "on_disconnect", "connector", "mock"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise TypeError(f"ChannelConfig.{name}: expected a callable or None, got {value!r}")
        if not isinstance(self.debug, bool):
            raise TypeError(f"ChannelConfig.debug: expected a bool, got {self.debug!r}")

    @classmethod
    def coerce(cls, value: ChannelConfigLike, *, where: str = "channel") -> ChannelConfig:
        """``value`` itself if it is a ChannelConfig, else one built from its keys.

        ``where`` names the setting in error messages.

        :raises TypeError: ``value`` is neither, a key is not a ChannelConfig field, or
            ``address`` is missing.
        :raises ValueError: a field's value is out of range.
        """
        if isinstance(value, ChannelConfig):
            return value
        if isinstance(value, Mapping):
            _check_keys(value, where)
            if "address" not in value:
                raise TypeError(f"{where}: 'address' is required, got keys {sorted(value)!r}")
            return cls(**value)
        raise TypeError(f"{where}: expected a ChannelConfig or a dict of its fields, got {value!r}")

    def merged(self, changes: ChannelConfigLike) -> ChannelConfig:
        """This config with the fields of ``changes`` laid over it (a partial dict); a
        whole ChannelConfig replaces it.

        :raises TypeError: ``changes`` is neither, or a key is not a ChannelConfig field.
        :raises ValueError: a field's new value is out of range.
        """
        if isinstance(changes, ChannelConfig):
            return changes
        if not isinstance(changes, Mapping):
            raise TypeError(
                f"channel: expected a ChannelConfig or a dict of its fields, got {changes!r}"
            )
        _check_keys(changes, "channel")
        return dataclasses.replace(self, **changes)


ChannelConfigLike: TypeAlias = ChannelConfig | Mapping[str, Any]

FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ChannelConfig))


def _check_keys(value: Mapping[str, Any], where: str) -> None:
    unknown = [key for key in value if key not in FIELDS]
    if unknown:
        raise TypeError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"valid keys are {', '.join(FIELDS)}"
        )


def _check_options(options: object) -> tuple[tuple[str, Any], ...]:
    if isinstance(options, (str, bytes, Mapping)) or not isinstance(options, Sequence):
        raise TypeError(
            f"ChannelConfig.options: expected a sequence of (key, value) pairs, got {options!r}"
        )
    checked = []
    for option in options:
        if not isinstance(option, tuple) or len(option) != 2 or not isinstance(option[0], str):
            raise TypeError(
                f"ChannelConfig.options: expected (str key, value) pairs, got {option!r}"
            )
        key, value = option
        if not key:
            raise ValueError(f"ChannelConfig.options: expected a non-empty key, got {option!r}")
        checked.append((key, _check_option_value(key, value)))
    return tuple(checked)


def _check_option_value(key: str, value: object) -> object:
    """What grpc accepts: an int that fits a C int, a str, bytes, or a pointer object.

    Return the value as grpc must see it. grpc reads any other object with ``__int__``
    as a C pointer: a number that is not an ``int`` would be taken for a memory address,
    so a whole number of another type (``numpy.int64``) becomes an ``int`` and any other
    number (float, Decimal, Fraction) is refused by name.
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, int):
        value = operator.index(value)
    if isinstance(value, int):
        if value not in _C_INT:
            raise ValueError(
                f"ChannelConfig.options: expected an int from -2**31 to 2**31 - 1 for "
                f"{key!r} (grpc passes it as a C int), got {value!r}"
            )
    elif isinstance(value, numbers.Number):
        raise TypeError(
            f"ChannelConfig.options: expected an int, a str or bytes for {key!r}, got the "
            f"{type(value).__name__} {value!r} (grpc channel arguments take whole numbers, "
            "such as milliseconds, and would read this one as a memory address)"
        )
    elif not isinstance(value, (str, bytes)) and not hasattr(value, "__int__"):
        raise TypeError(
            f"ChannelConfig.options: expected an int, a str or bytes for {key!r}, got {value!r}"
        )
    return value


#: grpc's client interceptors for sync channels (``conngrpc.sync`` pools take these).
SyncInterceptor = (
    grpc.UnaryUnaryClientInterceptor
    | grpc.UnaryStreamClientInterceptor
    | grpc.StreamUnaryClientInterceptor
    | grpc.StreamStreamClientInterceptor
)
SYNC_INTERCEPTORS = (
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
)


def _check_interceptors(
    interceptors: object,
) -> tuple[grpc.aio.ClientInterceptor | SyncInterceptor, ...]:
    if isinstance(interceptors, (str, bytes)) or not isinstance(interceptors, Sequence):
        raise TypeError(
            "ChannelConfig.interceptors: expected a sequence of grpc.aio client interceptors "
            f"(grpc's sync ones for a conngrpc.sync pool), got {interceptors!r}"
        )
    for interceptor in interceptors:
        if not isinstance(interceptor, (grpc.aio.ClientInterceptor, *SYNC_INTERCEPTORS)):
            raise TypeError(
                "ChannelConfig.interceptors: expected grpc.aio client interceptors "
                f"(grpc's sync ones for a conngrpc.sync pool), got {interceptor!r}"
            )
    return tuple(interceptors)


def check_interceptors_for(config: ChannelConfig, front: str) -> None:
    """Raise unless ``config``'s interceptors are of the kind ``front``'s channels take:
    grpc.aio's for asyncio pools, grpc's sync ones for ``conngrpc.sync`` pools.

    :raises TypeError: one is of the other kind.
    """
    for interceptor in config.interceptors:
        is_aio = isinstance(interceptor, grpc.aio.ClientInterceptor)
        if is_aio != (front == "asyncio"):
            wanted, pool = (
                ("grpc.aio client interceptors", "an asyncio pool")
                if front == "asyncio"
                else (
                    "grpc's sync client interceptors (grpc.UnaryUnaryClientInterceptor, ...)",
                    "a conngrpc.sync pool",
                )
            )
            raise TypeError(
                f"ChannelConfig.interceptors: expected {wanted} for {pool}, got {interceptor!r}"
            )
