"""What this process holds on the network, read from /proc (Linux)."""

from __future__ import annotations

import os
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


def closed_port() -> int:
    """A port on 127.0.0.1 that nobody listens on now (connecting to it is refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
