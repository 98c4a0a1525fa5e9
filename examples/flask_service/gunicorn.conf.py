"""gunicorn's settings for examples/flask_service: the app preloaded in the master, the
pools started in each worker after the fork.

    BACKEND_ADDRESS=127.0.0.1:50051 gunicorn -c examples/flask_service/gunicorn.conf.py

Command-line options override these (``--bind``, ``--workers``, ...).
"""

from __future__ import annotations

from typing import Any

wsgi_app = "examples.flask_service.app:app"
bind = ["127.0.0.1:8000"]
workers = 3
worker_class = "sync"  # one request at a time per worker; the pool is shared by none
#: Import the app once, in the master, before the workers fork from it: the module builds
#: its stub on the pool's PooledChannel, which starts nothing, so nothing of grpc runs in
#: the master when it forks.
preload_app = True
#: gunicorn 25.1 and later open a control socket, at one path for every gunicorn the user
#: runs ($XDG_RUNTIME_DIR/gunicorn.ctl); this example has no use for it. Older gunicorn
#: ignores the name.
control_socket_disable = True


def post_fork(server: Any, worker: Any) -> None:
    """In the new worker: start its own pool (the master never runs one)."""
    from examples.flask_service.app import start_pools

    worker.conngrpc_supervisor = start_pools()
    worker.log.info("conngrpc pools started (pid: %s)", worker.pid)


def worker_exit(server: Any, worker: Any) -> None:
    """In the worker, as it exits: stop its pool (calls in flight finish first, within
    the channels' ``shutdown_grace``)."""
    supervisor = getattr(worker, "conngrpc_supervisor", None)
    if supervisor is not None:
        supervisor.stop()
        worker.log.info("conngrpc pools stopped (pid: %s)", worker.pid)
