"""Pools of persistent channels: the declarative Pool, its running state, and Channel."""

from .pool import Pool as Pool
from .runtime import PoolStatus as PoolStatus
from .settings import PoolSettings as PoolSettings
from .single import Channel as Channel

__all__ = ["Channel", "Pool", "PoolSettings", "PoolStatus"]
