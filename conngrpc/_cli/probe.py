"""``python -m conngrpc probe ADDRESS``: health-check every channel of a pool, then exit.

stdout carries the result only (a table, or one JSON document with ``--json``); failed
connection attempts are reported on stderr as they happen.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import json
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import grpc
import grpc.aio

from .. import _health, telemetry
from ..channel.connector import raw_unary
from ..errors import NotConnectedError
from ..pool import Pool
from ..supervisor import Supervisor
from .options import Target

__all__ = ["NO_HEALTH_SERVICE", "ChannelReport", "probe"]

_POOL = "conngrpc-probe"

#: What an UNIMPLEMENTED answer to Health/Check means, in the library's words.
NO_HEALTH_SERVICE = "no grpc.health.v1 service: counts as serving"


@dataclass(frozen=True, slots=True)
class ChannelReport:
    """One channel's row: where it went and what its server said.

    ``status`` is a health status (``SERVING``, ``NOT_SERVING``, ``SERVICE_UNKNOWN``,
    ``UNKNOWN``), ``NOT_CONNECTED``, or the grpc status code of a check that failed
    (``UNIMPLEMENTED``, ``NOT_FOUND``, ``DEADLINE_EXCEEDED``, ...); ``reason`` says more
    when it is not a health status. ``serving`` is the verdict a pool with
    ``health_check`` would give: SERVING, or UNIMPLEMENTED (the server has no
    grpc.health.v1 service, which counts as serving, as in gRFC A17).
    """

    index: int
    backend: str | None
    local_address: str | None
    latency_ms: float | None
    status: str
    reason: str | None = None
    serving: bool = False


async def probe(target: Target, *, as_json: bool) -> int:
    """Connect, check every channel, print the result; 0 if every channel is SERVING."""
    failures: dict[int, str] = {}
    began = time.monotonic()

    def on_failure(_: Any, __: Any, metadata: Mapping[str, Any], ___: Any) -> None:
        # Said as it happens (on stderr: stdout is the result), once per channel and reason,
        # so a refused or unresolvable address does not wait its whole timeout in silence.
        index, reason = metadata["channel_index"], metadata["reason"]
        if failures.get(index) != reason:
            elapsed = time.monotonic() - began
            print(f"{elapsed:6.2f} s  channel {index}: {reason}", file=sys.stderr, flush=True)
        failures[index] = reason

    telemetry.attach("conngrpc-probe", ("conngrpc", "channel", "connection_failed"), on_failure)
    spec = Pool.child_spec(
        name=_POOL,
        pool_size=target.pool_size,
        channel=target.channel(),
        telemetry_interval=3600,
    )
    reports: list[ChannelReport] = []
    try:
        async with Supervisor([spec], name="probe"):
            with contextlib.suppress(NotConnectedError):  # the reports say which failed
                await Pool.wait_connected(_POOL, timeout=target.timeout)
            workers = {w.index: w for w in Pool.get_all_workers(_POOL)}
            for index in range(target.pool_size):
                worker = workers.get(index)
                if worker is None or worker.channel is None:
                    reason = failures.get(index, f"not connected within {target.timeout:g} s")
                    reports.append(ChannelReport(index, None, None, None, "NOT_CONNECTED", reason))
                    continue
                reports.append(await _check(index, worker.backend, worker.channel, target))
    finally:
        telemetry.detach("conngrpc-probe")
    serving = sum(report.serving for report in reports)
    if as_json:
        document = {
            "address": target.address,
            "service": target.service,
            "tls": target.tls,
            "pool_size": target.pool_size,
            "channels": [asdict(report) for report in reports],
            "serving": serving,
            "all_serving": serving == target.pool_size,
        }
        print(json.dumps(document, indent=2))
    else:
        _print_table(target, reports, serving)
    return 0 if serving == target.pool_size else 1


async def _check(
    index: int, backend: str | None, channel: grpc.aio.Channel, target: Target
) -> ChannelReport:
    """Ask ``Health/Check`` over ``channel``; note its latency and the connection it used."""
    before = _connections()
    check = raw_unary(channel, _health.CHECK_METHOD)
    begin = time.perf_counter()
    reason = None
    try:
        answer = await check(_health.encode_request(target.service), timeout=target.timeout)
        number = _health.decode_response(answer)
        status = _health.STATUS_NAMES.get(number, f"status {number}")
    except grpc.aio.AioRpcError as error:
        status, reason = error.code().name, error.details()
        if error.code() is grpc.StatusCode.UNIMPLEMENTED:
            reason = NO_HEALTH_SERVICE
    latency = round((time.perf_counter() - begin) * 1000, 3)
    after = _connections()
    used = [after[k][1] for k in after if after[k][0] > before.get(k, (0, ""))[0]]
    local = used[0] if len(used) == 1 and used[0] != "?" else None
    serving = status in ("SERVING", "UNIMPLEMENTED")  # as a pool's health check counts
    return ChannelReport(index, backend, local, latency, status, reason, serving)


def _print_table(target: Target, reports: list[ChannelReport], serving: int) -> None:
    service = f"service {target.service!r}" if target.service else "the whole server"
    security = "TLS" if target.tls is not None else "plaintext"
    print(f"probe {target.address} ({security}, {service}): {target.pool_size} channel(s)")
    rows = [("channel", "backend", "local address", "latency", "status")]
    for report in reports:
        status = "NOT CONNECTED" if report.status == "NOT_CONNECTED" else report.status
        latency = "-" if report.latency_ms is None else f"{report.latency_ms:.2f} ms"
        rows.append(
            (
                str(report.index),
                report.backend or "-",
                report.local_address or "-",
                latency,
                status + (f": {report.reason}" if report.reason else ""),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for row in rows:
        index, backend, local, latency, status = row
        print(
            f"{index:>{widths[0]}}  {backend:<{widths[1]}}  {local:<{widths[2]}}  "
            f"{latency:>{widths[3]}}  {status}"
        )
    unimplemented = sum(report.status == "UNIMPLEMENTED" for report in reports)
    without = f" ({unimplemented} of them: no grpc.health.v1 service)" if unimplemented else ""
    print(f"{serving} of {target.pool_size} SERVING{without}")


def _connections() -> dict[str, tuple[int, str]]:
    """grpc's channelz view of this process: channel id -> (calls started, local address).

    Best effort: channelz is read through grpc's internal module; {} when unavailable.
    """
    try:
        cygrpc = importlib.import_module("grpc._cython.cygrpc")
        found: dict[str, tuple[int, str]] = {}
        for channel in json.loads(cygrpc.channelz_get_top_channels(0)).get("channel", []):
            local = "?"
            for ref in channel.get("subchannelRef", []):
                sub = json.loads(cygrpc.channelz_get_subchannel(int(ref["subchannelId"])))
                for sock_ref in sub["subchannel"].get("socketRef", []):
                    sock = json.loads(cygrpc.channelz_get_socket(int(sock_ref["socketId"])))
                    local = _address(sock["socket"].get("local", {}))
            calls = int(channel["data"].get("callsStarted", 0))
            found[channel["ref"]["channelId"]] = (calls, local)
        return found
    except Exception:
        return {}


def _address(endpoint: Mapping[str, Any]) -> str:
    tcp = endpoint.get("tcpipAddress")
    if not tcp:
        return "?"
    raw = base64.b64decode(tcp.get("ipAddress", ""))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return f"{socket.inet_ntop(family, raw)}:{tcp.get('port', 0)}"
