"""Pools of persistent channels: the declarative Pool, its running state, and Channel."""

from .pool import Pool as Pool
from .pooled import PooledChannel as PooledChannel
from .runtime import PoolStatus as PoolStatus
from .settings import PoolSettings as PoolSettings
from .single import Channel as Channel

__all__ = ["Channel", "Pool", "PoolSettings", "PoolStatus", "PooledChannel"]
