"""conngrpc: pools of persistent, pre-connected gRPC channels under an OTP-style supervisor.

Everything public is exported here; other modules are private and may change.
"""

from . import sync as sync
from . import telemetry as telemetry
from .channel import Backoff as Backoff
from .channel import ChannelConfig as ChannelConfig
from .channel import Connector as Connector
from .channel import ExponentialBackoff as ExponentialBackoff
from .errors import ChannelUnavailableError as ChannelUnavailableError
from .errors import ChildStartError as ChildStartError
from .errors import ChildStateError as ChildStateError
from .errors import ConnectFailedError as ConnectFailedError
from .errors import ConnGRPCError as ConnGRPCError
from .errors import DuplicateChildError as DuplicateChildError
from .errors import NameTakenError as NameTakenError
from .errors import NotConnectedError as NotConnectedError
from .errors import PoolNotStartedError as PoolNotStartedError
from .errors import StrayCancellationError as StrayCancellationError
from .errors import SupervisorError as SupervisorError
from .errors import SupervisorGaveUpError as SupervisorGaveUpError
from .errors import SupervisorNotRunningError as SupervisorNotRunningError
from .errors import UnknownChildError as UnknownChildError
from .pool import Channel as Channel
from .pool import ChannelWorker as ChannelWorker
from .pool import Pool as Pool
from .pool import PooledChannel as PooledChannel
from .pool import PoolSettings as PoolSettings
from .pool import PoolStatus as PoolStatus
from .supervisor import ChildCounts as ChildCounts
from .supervisor import ChildInfo as ChildInfo
from .supervisor import ChildSpec as ChildSpec
from .supervisor import ChildState as ChildState
from .supervisor import Supervisor as Supervisor

__version__ = "0.1.0"

__all__ = [
    "Backoff",
    "Channel",
    "ChannelConfig",
    "ChannelUnavailableError",
    "ChannelWorker",
    "ChildCounts",
    "ChildInfo",
    "ChildSpec",
    "ChildStartError",
    "ChildState",
    "ChildStateError",
    "ConnGRPCError",
    "ConnectFailedError",
    "Connector",
    "DuplicateChildError",
    "ExponentialBackoff",
    "NameTakenError",
    "NotConnectedError",
    "Pool",
    "PoolNotStartedError",
    "PoolSettings",
    "PoolStatus",
    "PooledChannel",
    "StrayCancellationError",
    "Supervisor",
    "SupervisorError",
    "SupervisorGaveUpError",
    "SupervisorNotRunningError",
    "UnknownChildError",
    "__version__",
    "sync",
    "telemetry",
]
