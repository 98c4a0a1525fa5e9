"""What this process holds on the network, read from /proc (Linux)."""

from __future__ import annotations

import os
import random
import socket


def _socket_inodes() -> set[str]:
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def established_sockets(port: int) -> int:
    """How many TCP connections this process has ESTABLISHED to ``port`` on any address."""
    mine = _socket_inodes()
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                next(lines)
                for line in lines:
                    fields = line.split()
                    remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                    if remote_port == port and fields[3] == "01" and fields[9] in mine:
                        count += 1
        except FileNotFoundError:
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
