"""conngrpc for threaded programs: pools of grpc sync channels, run on a thread of their own.

Flask and Django views, Celery tasks and scripts call through grpc's sync
``grpc.Channel``; ``conngrpc.sync`` gives them what ``conngrpc`` gives asyncio: channels
connected at start and watched, supervised reconnects, the spread over replicas, the
least-loaded pick, ejection, and the pool's telemetry. The pool's table, pick,
ejection, settings and telemetry are the asyncio pool's own code; what differs is the
channel type, and that the supervision tree runs on a background thread::

    from conngrpc import sync

    class DemoPool(sync.Pool, pool_size=4, channel={"address": "localhost:50051"}):
        pass

    stub = DemoStub(DemoPool.channel())      # a grpc.Channel; each call picks its connection
    with sync.Supervisor([DemoPool]):
        DemoPool.wait_connected()
        stub.Get(request)                     # from any thread
"""

from . import fork as fork  # registers what a forked child does
from .channel import ThreadChannel as ThreadChannel
from .pool import Pool as Pool
from .pooled import PooledChannel as PooledChannel
from .supervisor import Supervisor as Supervisor

__all__ = ["Pool", "PooledChannel", "Supervisor", "ThreadChannel"]
