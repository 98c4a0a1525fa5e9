"""Resolvers: a pool's target, turned into the backend addresses its channels spread over.

The default resolver reads the target as grpc would: ``host:port`` and
``dns:///host:port`` resolve to every address (A and AAAA records), ``ipv4:`` and
``ipv6:`` lists give theirs, and anything else (``unix:``, ``xds:``, a DNS server named
in the target, a custom connector's address) is one backend. A user resolver is a
callable, sync or async, that returns the addresses (``ip:port``, ``[ipv6]:port``,
``host:port`` or any grpc target).

Each channel then dials one address (an IP as ``ipv4:``/``ipv6:``, so grpc does not
resolve again), while the authority and the TLS host name stay those of the target the
user wrote.
"""

from __future__ import annotations

import dataclasses
import inspect
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeAlias

import anyio

from ..channel.config import ChannelConfig
from ..channel.target import Target, parse_target

__all__ = ["Resolver", "default_resolver", "dial_config", "display", "run_resolver"]

#: A resolver: a zero-argument callable, sync or async, returning backend addresses.
Resolver: TypeAlias = Callable[[], Iterable[str] | Awaitable[Iterable[str]]]

_AUTHORITY = "grpc.default_authority"
_TLS_NAME = "grpc.ssl_target_name_override"


def default_resolver(config: ChannelConfig) -> Resolver:
    """The resolver a pool uses unless given one: the target as grpc would read it."""
    if config.connector is not None or config.mock is not None:
        address = config.address

        def as_given() -> list[str]:
            return [address]  # a custom connector reads addresses its own way

        return as_given
    target = parse_target(config.address)

    async def resolve() -> list[str]:
        return await _resolve(target)

    return resolve


async def _resolve(target: Target) -> list[str]:
    if target.scheme in ("ipv4", "ipv6"):
        return list(target.addresses)
    if target.scheme != "dns" or target.authority is not None or target.host is None:
        return [target.text]
    host, port = target.host, target.port
    try:
        return [display(str(ipaddress.ip_address(host)), port)]
    except ValueError:
        pass
    found = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(display(str(sockaddr[0]), port) for *_, sockaddr in found))


def display(ip: str, port: int | None) -> str:
    """``ip:port``, with an IPv6 address in brackets."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


async def run_resolver(resolver: Resolver) -> list[str]:
    """Call ``resolver`` (sync or async) and check what it returned.

    :raises ValueError: it returned something that is not a list of grpc targets, or an
        empty string, naming the entry.
    """
    result: Any = resolver()
    if inspect.isawaitable(result):
        result = await result
    if isinstance(result, (str, bytes)) or not isinstance(result, Iterable):
        raise ValueError(f"resolver: expected a list of addresses, got {result!r}")
    addresses = list(result)
    for address in addresses:
        if not isinstance(address, str):
            raise ValueError(f"resolver: expected addresses as str, got {address!r}")
        parse_target(address, "resolver")
    return addresses


def dial_config(config: ChannelConfig, address: str) -> ChannelConfig:
    """The config a channel to ``address`` connects with: that address, the target's names.

    An IP address is dialled as ``ipv4:``/``ipv6:`` (grpc would otherwise resolve it
    again). When it differs from the target the user wrote, the authority (``:authority``
    header) and the TLS host name stay the written target's: grpc's
    ``grpc.default_authority`` and ``grpc.ssl_target_name_override``, unless the
    options set them already.
    """
    if address == config.address or config.mock is not None:
        return config
    if config.connector is not None:  # it reads addresses its own way: just say which
        return dataclasses.replace(config, address=address)
    parsed = parse_target(address, "backend")
    dialled = address
    if parsed.scheme == "dns" and parsed.host is not None and _is_ip(parsed.host):
        family = "ipv6" if ":" in parsed.host else "ipv4"
        dialled = f"{family}:{display(parsed.host, parsed.port)}"
    written = parse_target(config.address)
    options = list(config.options)
    keys = {key for key, _ in options}
    if written.scheme == "dns" and written.host is not None:
        if _AUTHORITY not in keys:
            options.append((_AUTHORITY, display(written.host, written.port)))
        if config.credentials is not None and _TLS_NAME not in keys:
            options.append((_TLS_NAME, written.host))
    return dataclasses.replace(config, address=dialled, options=tuple(options))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
