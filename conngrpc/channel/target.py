"""grpc targets, parsed where they are written: a mistake fails at once, not on every attempt.

grpc takes ``host:port`` (resolved through DNS), ``dns:[//authority/]host[:port]``,
``ipv4:`` and ``ipv6:`` address lists, ``unix:path``, ``unix:///absolute/path``,
``unix-abstract:name``, ``vsock:cid:port`` and the xDS schemes. A target it cannot
parse, or whose port it would take modulo 65536, fails every attempt for ever, so
this module rejects it with a ``ValueError`` that says what is wrong.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = ["DEFAULT_PORT", "SCHEMES", "Target", "parse_target"]

#: The port grpc dials when a target names none (``https``).
DEFAULT_PORT = 443

#: The resolver schemes grpc knows; a target with another ``scheme:`` prefix is read
#: by grpc as ``dns:///<target>``, as here.
SCHEMES = frozenset({"dns", "ipv4", "ipv6", "unix", "unix-abstract", "vsock", "xds", "google-c2p"})

# grpc's native resolver knows these two named ports and no others.
_NAMED_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed grpc target.

    - ``text``: the target as written.
    - ``scheme``: grpc's resolver scheme (``dns`` for a plain ``host:port``).
    - ``host``, ``port``: for ``dns`` targets, what is resolved and dialled.
    - ``addresses``: for ``ipv4:`` / ``ipv6:`` lists, each address as ``ip:port``
      (IPv6 in brackets), in order.
    - ``authority``: the DNS server named in ``dns://authority/...``, else None.
    """

    text: str
    scheme: str
    host: str | None = None
    port: int | None = None
    addresses: tuple[str, ...] = ()
    authority: str | None = None


def parse_target(text: str, where: str = "address") -> Target:
    """Parse ``text`` as grpc would, or say why grpc could never connect to it.

    :raises ValueError: an unknown ``scheme://``, an empty host, a port that is not a
        number from 1 to 65535, or an address list with a bad address.
    """
    scheme, colon, rest = text.partition(":")
    if colon and scheme in SCHEMES:
        if scheme == "dns":
            return _dns(text, rest, where)
        if scheme in ("ipv4", "ipv6"):
            return _address_list(text, scheme, rest, where)
        if not rest.strip("/"):
            raise ValueError(f"{where}: expected something after '{scheme}:', got {text!r}")
        return Target(text, scheme)
    if "://" in text:
        raise ValueError(
            f"{where}: expected host:port or a grpc target (dns:///host:port, "
            f"ipv4:ip:port, unix:path, ...), got {text!r}: grpc knows no scheme {scheme!r}"
        )
    host, port = _host_port(text, text, where)
    return Target(text, "dns", host=host, port=port)


def _dns(text: str, rest: str, where: str) -> Target:
    authority = None
    if rest.startswith("//"):
        authority, slash, rest = rest[2:].partition("/")
        if not slash:
            raise ValueError(f"{where}: expected dns://[authority]/host:port, got {text!r}")
    host, port = _host_port(rest, text, where)
    return Target(text, "dns", host=host, port=port, authority=authority or None)


def _address_list(text: str, scheme: str, rest: str, where: str) -> Target:
    addresses = []
    for item in rest.split(","):
        host, port = _host_port(item, text, where, port_required=True)
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(
                f"{where}: expected {scheme} addresses in {text!r}, got {host!r}"
            ) from None
        if ip.version != int(scheme[-1]):
            raise ValueError(f"{where}: expected {scheme} addresses in {text!r}, got {host!r}")
        addresses.append(f"[{host}]:{port}" if ip.version == 6 else f"{host}:{port}")
    return Target(text, scheme, addresses=tuple(addresses))


def _host_port(
    hostport: str, text: str, where: str, *, port_required: bool = False
) -> tuple[str, int]:
    """Split as grpc does: ``[v6]:port``, ``host:port``, or a bare host (or bare IPv6)."""
    if hostport.startswith("["):
        host, bracket, after = hostport[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ValueError(f"{where}: expected [ipv6]:port in {text!r}, got {hostport!r}")
        port_text = after[1:] if after else None
    elif hostport.count(":") == 1:
        host, _, port_text = hostport.partition(":")
    else:  # no colon, or an IPv6 address without brackets (and so without a port)
        host, port_text = hostport, None
        if ":" in host and not _is_ipv6(host):
            raise ValueError(
                f"{where}: expected host:port or [ipv6]:port in {text!r}, got {hostport!r}"
            )
    if port_required and not port_text:
        raise ValueError(
            f"{where}: expected ip:port in {text!r} (a port is required), got {hostport!r}"
        )
    if not host.strip():
        raise ValueError(f"{where}: expected a host in {text!r}, got none")
    if any(c.isspace() for c in host):
        raise ValueError(f"{where}: expected a host without spaces in {text!r}, got {host!r}")
    return host, _port(port_text, text, where)


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def _port(port_text: str | None, text: str, where: str) -> int:
    if port_text is None or port_text == "":
        return DEFAULT_PORT
    if port_text in _NAMED_PORTS:
        return _NAMED_PORTS[port_text]
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{where}: expected a port from 1 to 65535 in {text!r}, got {port_text!r}")
    return int(port_text)
