"""A pool's settings: declared on a class, from ``config()``, or given to ``child_spec``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

from .._checks import check_count, check_seconds
from ..channel.config import ChannelConfig, ChannelConfigLike
from .resolver import Resolver
from .service_config import PoolServiceConfig, parse_service_config

__all__ = ["PoolSettings", "ResolvedSettings", "check_name", "check_setting", "merge"]


class PoolSettings(TypedDict, total=False):
    """What a pool is configured with, in a class statement, ``config()`` or ``child_spec``.

    A ``TypedDict``: each key is optional where it is given, and ``child_spec()``
    fails at once when ``name`` (for a pool with no class statement), ``pool_size`` or
    ``channel`` is missing overall. Each key, with its type, default and meaning, is in
    the table of settings on the reference's Pools page.
    """

    #: the pool's name (non-empty), registered while it runs; a declared pool's is its
    #: class name unless the class statement gives one, and cannot be changed later
    name: str
    #: how many channels the pool keeps connected (>= 1)
    pool_size: int
    #: how each channel is opened, watched and reopened: a :class:`ChannelConfig` or a
    #: dict of its fields (a partial dict is laid over the channel declared below it)
    channel: ChannelConfigLike
    #: seconds (> 0) between the pool's ``("conngrpc", "pool", "status")`` events
    telemetry_interval: float
    #: the pool supervisor's restart intensity (>= 0): at most this many restarts of its
    #: channel workers within ``max_seconds``; one more and the pool gives up (stops,
    #: a crash for the supervisor above it)
    max_restarts: int
    #: the window, in seconds (> 0), in which ``max_restarts`` are counted
    max_seconds: float
    #: a zero-argument callable, sync or async, returning the backend addresses
    #: (``ip:port``, ``[ipv6]:port``, ``host:port`` or any grpc target); unset (None),
    #: the channel's ``address`` is resolved as grpc would (a host name to every A and
    #: AAAA record)
    resolver: Resolver
    #: seconds (> 0) between two resolutions; channels move one at a time, make before
    #: break, so that every backend holds its share
    resolve_interval: float
    #: the most calls (>= 1) the :class:`PooledChannel` puts on one channel at once
    #: (say, the server's stream cap per connection); more wait in its queue, first come
    #: first served. Unset (None), a cap is learnt from the streams a server refuses
    max_calls_per_channel: int
    #: grpc's service config (a dict or a JSON string), done across the pool's
    #: connections as grpc does it across its subchannels: outlier detection, retries,
    #: hedging, the health check, ``methodConfig``; unset (None), none
    service_config: str | Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ResolvedSettings:
    """A pool's settings after the class statement, runtime config and overrides merged."""

    name: str
    pool_size: int
    channel: ChannelConfig
    telemetry_interval: float = 5.0
    max_restarts: int = 3
    max_seconds: float = 5.0
    resolver: Resolver | None = None
    resolve_interval: float = 30.0
    max_calls_per_channel: int | None = None
    #: grpc's service config as given (a JSON string or a dict), None when none was
    service_config: str | Mapping[str, Any] | None = None
    #: what the pool does itself of its service config, read once (the defaults when
    #: none): a dict changed after the settings were made changes nothing
    balancing: PoolServiceConfig = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for key in SETTINGS:
            value = getattr(self, key)
            # service_config: parsed below, once (parsing is its check)
            if not (key in _MAY_BE_NONE and value is None) and key != "service_config":
                check_setting(key, value)
        if self.service_config is None:
            object.__setattr__(self, "balancing", PoolServiceConfig())
            return
        balancing = parse_service_config(self.service_config)
        object.__setattr__(self, "balancing", balancing)
        object.__setattr__(self, "channel", _with_service_config(self.channel, balancing))


def _with_service_config(channel: ChannelConfig, parsed: PoolServiceConfig) -> ChannelConfig:
    """The channel config each connection gets: the service config's health check, and
    what the pool leaves to grpc of the document (``methodConfig``, ...) in its options.

    :raises ValueError: ``grpc.service_config`` is in the channel's options too, or
        ``healthCheckConfig`` names another service than the channel's ``health_check``.
    """
    _check_channel(channel.options, channel.health_check, parsed)
    changes: dict[str, Any] = {}
    if parsed.health_service is not None:
        changes["health_check"] = parsed.health_service
    options = tuple(channel.options)
    if parsed.channel_service_config is not None:
        options = (*options, (_GRPC_SERVICE_CONFIG, parsed.channel_service_config))
    if options != tuple(channel.options):
        changes["options"] = options
    return channel.merged(changes) if changes else channel


def _named(option: object, name: str) -> bool:
    """Whether a channel option (a ``(name, value)`` pair) is ``name``'s."""
    return isinstance(option, tuple | list) and option[:1] in ((name,), [name])


def _check_channel(options: Any, health_check: object, parsed: PoolServiceConfig) -> None:
    """Raise where the service config and the channel's settings say different things."""
    if any(_named(option, _GRPC_SERVICE_CONFIG) for option in options):
        raise ValueError(
            f"Pool service_config: expected grpc's service config in one place, but "
            f"channel options give {_GRPC_SERVICE_CONFIG!r} too; give it as the pool's "
            "service_config alone (the pool balances across its connections itself)"
        )
    if parsed.health_service is not None and health_check not in (None, parsed.health_service):
        raise ValueError(
            "Pool service_config: healthCheckConfig.serviceName: expected the service "
            f"the channel's health_check names ({health_check!r}) or no "
            f"health_check, got {parsed.health_service!r}"
        )


_GRPC_SERVICE_CONFIG = "grpc.service_config"


_MAY_BE_NONE = ("resolver", "max_calls_per_channel", "service_config")


SETTINGS = tuple(PoolSettings.__annotations__)


def check_name(where: str, value: object) -> str:
    """A pool or channel name: a non-empty str.

    :raises TypeError: it is not a str (None included: the message says what came).
    :raises ValueError: it is empty.
    """
    if not isinstance(value, str):
        raise TypeError(f"{where}: expected a str, got {value!r}")
    if not value:
        raise ValueError(f"{where}: expected a non-empty str, got ''")
    return value


def check_setting(key: str, value: Any) -> None:
    """Raise where a pool setting is wrong, naming it; ``channel`` is checked by its class."""
    if key == "name":
        check_name("Pool name", value)
    elif key == "pool_size":
        check_count("Pool pool_size", value, minimum=1)
    elif key == "max_restarts":
        check_count("Pool max_restarts", value)
    elif key == "max_calls_per_channel":
        check_count("Pool max_calls_per_channel", value, minimum=1)
    elif key in ("telemetry_interval", "max_seconds", "resolve_interval"):
        check_seconds(f"Pool {key}", value)
    elif key == "resolver":
        if not callable(value):
            raise TypeError(
                "Pool resolver: expected a callable (sync or async) returning backend "
                f"addresses, got {value!r}"
            )
    elif key == "service_config":
        parse_service_config(value)
    elif key == "channel":
        if value is None:
            raise TypeError(
                "Pool channel: expected a ChannelConfig or a dict of its fields, got None"
            )
    else:
        raise TypeError(f"Pool: unknown setting {key!r}; valid settings are {', '.join(SETTINGS)}")


def merge(settings: dict[str, Any], changes: Mapping[str, Any], where: str) -> None:
    """Lay ``changes`` over ``settings``; a partial channel dict merges field by field."""
    for key, value in changes.items():
        check_setting(key, value)
        if key == "channel":
            base = settings.get("channel")
            if isinstance(base, ChannelConfig):
                value = base.merged(value)
            elif isinstance(base, Mapping) and isinstance(value, Mapping):
                value = {**base, **value}
            value = _channel_or_partial(value, where)
        settings[key] = value
    channel, service_config = settings.get("channel"), settings.get("service_config")
    if channel is not None and service_config is not None:  # checked together, at once
        if isinstance(channel, ChannelConfig):
            options, health_check = channel.options, channel.health_check
        else:  # a partial dict, checked field by field already
            options, health_check = channel.get("options", ()), channel.get("health_check")
        _check_channel(options, health_check, parse_service_config(service_config))


def _channel_or_partial(value: Any, where: str) -> ChannelConfig | Mapping[str, Any]:
    """A ChannelConfig when ``value`` says enough to build one; else a checked partial dict."""
    if isinstance(value, Mapping) and "address" not in value:
        ChannelConfig.coerce({**value, "address": "placeholder:1"}, where=where)
        return value
    return ChannelConfig.coerce(value, where=where)
