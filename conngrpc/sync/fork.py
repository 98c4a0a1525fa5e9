"""What a forked child inherits of ``conngrpc.sync``: nothing that runs.

A process that forks (gunicorn, uWSGI, Celery's prefork pool, ``multiprocessing`` with
``fork``) copies its memory, not its threads: a sync supervisor's thread, its event loop
and the grpc channels its pools held stay behind in the parent. In the child, the
parent's pools are let go of at once (after ``os.fork()``, before anything else runs
there): their names are free, calls through stubs built before the fork fail at once
as UNAVAILABLE and the hand-outs raise ``PoolNotStartedError``, each saying that the
pool ran in the parent and must be started in this process, until it is. The
parent's supervisors count as stopped in the child (``stop()`` returns at once).

The parent's grpc objects are kept, never closed, in the child: freeing a channel of the
parent's there may crash or hang grpc. Locks that another thread of the parent held
when it forked are made anew.

grpc's own rules decide what a child may do with grpc once its parent used it:

- with grpc's fork support off (``GRPC_ENABLE_FORK_SUPPORT=0``, read when grpc is
  imported; it is on otherwise), the child's calls never complete;
- grpc.aio never survives a fork (a sync pool's health checks use it);
- with fork support on, a sync call in flight as the process forks hangs the child in
  grpc's own fork handler, before any code of the program runs there.

In the first two cases, a sync supervisor started in the child raises ``RuntimeError``
saying why (for the second, only a pool with health checks), rather than letting grpc
hang or crash there; the third is grpc's to fix, and the guide's "Threads" page says not
to fork with calls in flight. The way that always works: fork first, then start the pools
in each child (gunicorn's ``post_fork`` with ``--preload``, Celery's ``worker_process_init``).
"""

from __future__ import annotations

import os
from typing import Any

from grpc._cython import cygrpc  # type: ignore[attr-defined]

from ..pool.runtime import forked_from, thread_pools
from . import attempts, channel, runtime, supervisor

__all__ = ["aio_unusable", "check_usable", "inherited", "unusable"]

#: What this process inherited from its parent's sync pools: kept for ever, unused.
inherited: list[Any] = []
#: Why grpc cannot be used in this process, forked from one that used it; None if it can.
unusable: str | None = None
#: Why grpc.aio cannot (a sync pool's health checks use it), for the same reason.
aio_unusable: str | None = None


def _in_child() -> None:
    """After ``os.fork()``, in the child: forget the parent's pools and supervisors."""
    global unusable, aio_unusable
    parent = os.getppid()
    for name, pool in thread_pools.forget_all().items():
        forked_from[name] = parent
        inherited.append(pool)
        for slot in (*pool.handout.slots, *pool.table.draining.values()):
            forget = getattr(slot.channel, "forget_after_fork", None)
            if forget is not None:
                forget()
    inherited.extend(channel.forget_watchers())
    attempts.forget_after_fork()
    runtime.renew_after_fork()
    supervisor.forget_after_fork()
    used = channel.used_in
    if used.get("grpc") == parent and not cygrpc.is_fork_support_enabled():
        unusable = (
            f"this process forked from one that used grpc through conngrpc.sync (pid "
            f"{parent}) with grpc's fork support off (GRPC_ENABLE_FORK_SUPPORT=0): grpc's "
            "calls cannot complete here"
        )
    if used.get("grpc.aio") == parent:
        aio_unusable = (
            f"this process forked from one that used grpc.aio (pid {parent}; a sync pool's "
            "health checks use it), which does not survive a fork: its calls hang or crash "
            "here"
        )


def check_usable(health_checked: bool = False) -> None:
    """:raises RuntimeError: grpc (or, for health checks, grpc.aio) cannot be used in
    this process, a child forked from one that used it."""
    why = unusable or (aio_unusable if health_checked else None)
    if why is not None:
        raise RuntimeError(
            f"conngrpc.sync: {why}. Start pools after forking instead, in each child "
            "(gunicorn's post_fork with --preload, Celery's worker_process_init), with no "
            "grpc channel made in the parent"
        )


os.register_at_fork(after_in_child=_in_child)
