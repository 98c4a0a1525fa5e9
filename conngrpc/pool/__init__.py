"""Pools of persistent channels: the declarative Pool, its running state, and Channel.

A pool's channels are handed out two ways: ``Pool.get_channel`` gives a connected
``grpc.aio.Channel`` round-robin, and ``Pool.channel`` a :class:`PooledChannel` whose
every call goes to the connection with the fewest calls in flight.
"""

from .pool import Pool as Pool
from .pooled import PooledChannel as PooledChannel
from .runtime import PoolStatus as PoolStatus
from .settings import PoolSettings as PoolSettings
from .single import Channel as Channel
from .table import ChannelWorker as ChannelWorker

__all__ = ["Channel", "ChannelWorker", "Pool", "PoolSettings", "PoolStatus", "PooledChannel"]
