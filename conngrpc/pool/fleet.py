"""The resolver loop: a pool's backends, found anew every ``resolve_interval`` seconds.

It reports what the resolver found to the pool's table (which places the channels and
decides the moves), sooner while resolving fails or finds nothing, and wakes the table
when a failing backend's wait is over, so that the move to it, its retry, is decided.
"""

from __future__ import annotations

import time
from typing import Protocol

import anyio
from anyio.abc import TaskStatus

from .. import telemetry
from .._log import get_logger
from ..channel.backoff import ExponentialBackoff
from ..channel.changes import Reply
from ..channel.config import ChannelConfig
from . import placement
from .resolver import Resolver, run_resolver
from .table import PoolTable, Resolved, Tick

__all__ = ["RESOLVED", "RESOLVE_FAILED", "backend_backoff", "follow_resolver"]

RESOLVED = ("conngrpc", "pool", "resolved")
RESOLVE_FAILED = ("conngrpc", "pool", "resolve_failed")

_log = get_logger("conngrpc.pool")


class _Pool(Protocol):
    """The running pool, as the loop sees it."""

    name: str
    table: PoolTable

    def report(self, index: int | None, change: Resolved | Tick) -> Reply: ...

    async def wait_changed(self) -> None: ...


async def follow_resolver(
    pool: _Pool, resolver: Resolver, interval: float, *, task_status: TaskStatus[None]
) -> None:
    """Resolve every ``interval`` seconds, and wake the table when a backend may be retried."""
    task_status.started()
    retry = ExponentialBackoff(min=min(0.1, interval), max=interval)
    resolve_at = 0.0
    tick_at: float | None = None  # when the wait of the next failing backend ends
    while True:
        now = time.monotonic()
        if now >= resolve_at:
            found = await _resolve(pool, resolver)
            resolve_at = time.monotonic() + (interval if found else retry.next())
            if found:
                retry.reset()
        if tick_at is not None and now >= tick_at:
            pool.report(None, Tick())
        tick_at = placement.next_retry_at(pool.table, now)
        wake_at = resolve_at if tick_at is None else min(resolve_at, tick_at)
        with anyio.move_on_after(wake_at - time.monotonic()):
            await pool.wait_changed()


async def _resolve(pool: _Pool, resolver: Resolver) -> bool:
    """Ask the resolver for the backends and report them; False when it failed or found
    none."""
    reason: str | None = None
    try:
        addresses = await run_resolver(resolver)
    except Exception as error:
        reason = f"{type(error).__name__}: {error}"
        addresses = []
    if not addresses and reason is None:
        reason = "the resolver found no addresses"
    table = pool.table
    if reason is not None:
        if table.resolve_failure != reason:
            _log.warning("resolving failed", pool_name=pool.name, reason=reason)
        telemetry.execute(RESOLVE_FAILED, {}, {"pool_name": pool.name, "reason": reason})
    before = list(table.backends)
    pool.report(None, Resolved(tuple(addresses), reason))
    after = list(table.backends)
    added = [a for a in after if a not in before]
    removed = [a for a in before if a not in after]
    if added or removed:
        telemetry.execute(
            RESOLVED,
            {"backends": len(after)},
            {
                "pool_name": pool.name,
                "backends": tuple(after),
                "added": tuple(added),
                "removed": tuple(removed),
            },
        )
    return reason is None


def backend_backoff(config: ChannelConfig) -> ExponentialBackoff:
    """How long a refusing backend is left alone: the channel backoff's bounds when it is
    an ExponentialBackoff, else the defaults. A custom backoff object stays the workers'
    own (its calls are theirs alone: advanced on each of their failed attempts)."""
    backoff = config.backoff
    if isinstance(backoff, ExponentialBackoff):
        return ExponentialBackoff(min=backoff.minimum, max=backoff.maximum)
    return ExponentialBackoff()
