"""``python -m conngrpc watch ADDRESS``: keep a pool open and print its events live.

What an operator runs to see a flapping backend: every connect, failed attempt,
disconnect, health change and resolution is one line on stdout as it happens (one JSON
object a line with ``--json``), with the pool's status every ``--interval`` seconds,
until Ctrl-C (SIGINT) or SIGTERM closes the pool and ends the command with status 0.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import anyio

from .. import telemetry
from ..channel import ExponentialBackoff
from ..pool import Pool
from ..supervisor import Supervisor
from .options import Target
from .signals import stopping_on_signals

__all__ = ["EVENTS", "watch"]

_POOL = "conngrpc-watch"

#: The events watch prints, by their last word (which is what it prints).
EVENTS = [
    ("conngrpc", "channel", "connected"),
    ("conngrpc", "channel", "connection_failed"),
    ("conngrpc", "channel", "disconnected"),
    ("conngrpc", "channel", "health_changed"),
    ("conngrpc", "pool", "resolved"),
    ("conngrpc", "pool", "resolve_failed"),
    ("conngrpc", "pool", "status"),
]


async def watch(target: Target, *, interval: float, health_check: str | None, as_json: bool) -> int:
    """Run the pool and print its events until a signal; the exit status."""
    stop = anyio.Event()
    printer = _Printer(sys.stdout, as_json=as_json, on_closed=stop.set)
    spec = Pool.child_spec(
        name=_POOL,
        pool_size=target.pool_size,
        channel=target.channel(health_check=health_check, backoff=_backoff()),
        telemetry_interval=interval,
    )
    health = ""
    if health_check is not None:
        health = f", health of {f'service {health_check!r}' if health_check else 'the server'}"
    print(
        f"watching {target.address} with {target.pool_size} channel(s){health}, "
        f"status every {interval:g} s; Ctrl-C stops",
        file=sys.stderr,
        flush=True,
    )
    telemetry.attach_many("conngrpc-watch", EVENTS, printer.on_event)
    try:
        with stopping_on_signals(stop.set, "closing the pool"):
            async with Supervisor([spec], name="watch"):
                await stop.wait()
    finally:
        telemetry.detach("conngrpc-watch")
    return 0


def _backoff() -> ExponentialBackoff:
    """Reconnect soon after a backend comes back: an operator is watching."""
    return ExponentialBackoff(min=0.5, max=5.0)


class _Printer:
    """A telemetry handler that prints each event of the watched pool as one line."""

    def __init__(self, out: TextIO, *, as_json: bool, on_closed: Callable[[], None]) -> None:
        self.out = out
        self.as_json = as_json
        self.on_closed = on_closed
        self.closed = False

    def on_event(
        self,
        event: tuple[str, ...],
        measurements: Mapping[str, Any],
        metadata: Mapping[str, Any],
        _: Any,
    ) -> None:
        if metadata.get("pool_name") != _POOL or self.closed:
            return
        now = datetime.datetime.now().astimezone()
        fields = _fields(event[-1], measurements, metadata)
        if self.as_json:
            line = json.dumps({"time": now.isoformat(timespec="milliseconds"), **fields})
        else:
            line = _text(now, fields)
        try:
            print(line, file=self.out, flush=True)
        except BrokenPipeError:
            # Whoever read stdout has gone (`| head`, `| grep -m1`): stop quietly, and
            # keep Python from complaining about the pipe when it flushes at exit.
            self.closed = True
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.out.fileno())
            self.on_closed()


def _fields(
    name: str, measurements: Mapping[str, Any], metadata: Mapping[str, Any]
) -> dict[str, Any]:
    """What a line says about an event, as JSON would have it (the names of the event's
    measurements and metadata in docs/telemetry.md; durations in milliseconds)."""
    fields: dict[str, Any] = {
        "event": name,
        "channel": metadata.get("channel_index"),
        "backend": metadata.get("backend"),
    }
    if "duration" in measurements:
        fields["duration_ms"] = round(measurements["duration"] / 1e6, 3)
    if name == "status":
        fields["expected_size"] = measurements["expected_size"]
        fields["current_size"] = measurements["current_size"]
    keys = ("reason", "state", "status", "previous", "serving", "backends", "added", "removed")
    fields.update({key: metadata[key] for key in keys if key in metadata})
    if isinstance(fields.get("backends"), Mapping):
        fields["backends"] = dict(fields["backends"])
    return fields


def _text(now: datetime.datetime, fields: Mapping[str, Any]) -> str:
    """One line for people: time, channel, backend, event, details."""
    name = fields["event"]
    who = "pool" if fields["channel"] is None else f"channel {fields['channel']}"
    duration = fields.get("duration_ms", 0.0)
    if name == "connected":
        detail = f"in {duration:.1f} ms"
    elif name == "connection_failed":
        detail = f"after {duration:.1f} ms: {fields['reason']}"
    elif name == "disconnected":
        state = f" ({fields['state']})" if fields.get("state") else ""
        detail = f"{fields['reason']}{state} after {duration / 1000:.1f} s up"
    elif name == "health_changed":
        was = f" (was {fields['previous']})" if fields.get("previous") else ""
        detail = (
            f"{fields['status']}{was}: " + ("in" if fields["serving"] else "out of") + (" the pool")
        )
    elif name == "resolved":
        detail = f"{len(fields['backends'])} backend(s): {', '.join(fields['backends'])}"
        if fields["removed"]:
            detail += f"; removed {', '.join(fields['removed'])}"
    elif name == "status":
        spread = ", ".join(f"{backend} {count}" for backend, count in fields["backends"].items())
        detail = f"{fields['current_size']} of {fields['expected_size']} up ({spread})"
    else:  # resolve_failed
        detail = str(fields.get("reason", ""))
    time = now.strftime("%H:%M:%S.") + f"{now.microsecond // 1000:03d}"
    return f"{time}  {who:<10} {fields['backend'] or '-':<21} {name:<18} {detail}"
