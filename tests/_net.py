"""What this process holds on the network, read from /proc (Linux)."""

from __future__ import annotations

import os
import random
import socket

_TCP_ESTABLISHED = 1  # tcp_info.tcpi_state


def established_sockets(port: int, *, accepted: bool = False) -> int:
    """How many TCP connections this process has ESTABLISHED to ``port`` on any address;
    with ``accepted``, how many it accepted on ``port`` (a server's side of them).

    Each of the process's sockets is asked itself (through a duplicate of its
    descriptor), not looked up in /proc/net/tcp: the kernel writes that table a page
    per read, walking its socket hash afresh each time, so while sockets come and go
    (the TIME_WAIT ones of earlier tests expiring) a read can skip a line, and a
    socket that is open would read as closed.
    """
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:["):
                continue
            duplicate = os.dup(int(fd))
        except OSError:  # closed since the listing
            continue
        with socket.socket(fileno=duplicate) as sock:
            try:
                state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
                ends = sock.getsockname() if accepted else sock.getpeername()
                if state == _TCP_ESTABLISHED and ends[1] == port:
                    count += 1
            except OSError:  # not TCP, or not connected
                continue
    return count


def open_file_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out for a bind to port 0."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            return int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def closed_port() -> int:
    """A port on 127.0.0.1 that nobody listens on now (connecting to it is refused).

    Drawn below the kernel's ephemeral range: a server started afterwards on port 0
    (every test server) can never be given it, which a port freed by a bind to 0 could.
    """
    low = _ephemeral_low()
    for _ in range(100):
        port = _draw.randrange(max(1024, low - 12000), low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on 127.0.0.1 below {low} in 100 draws")


_draw = random.Random()
