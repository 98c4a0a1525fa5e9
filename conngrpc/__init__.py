"""conngrpc: pools of persistent, pre-connected gRPC channels under an OTP-style supervisor.

Everything public is exported here; other modules are private and may change.
"""

from . import telemetry as telemetry
from .errors import ChannelUnavailableError as ChannelUnavailableError
from .errors import ChildStartError as ChildStartError
from .errors import ChildStateError as ChildStateError
from .errors import ConnGRPCError as ConnGRPCError
from .errors import DuplicateChildError as DuplicateChildError
from .errors import NameTakenError as NameTakenError
from .errors import NotConnectedError as NotConnectedError
from .errors import PoolNotStartedError as PoolNotStartedError
from .errors import SupervisorError as SupervisorError
from .errors import SupervisorGaveUpError as SupervisorGaveUpError
from .errors import SupervisorNotRunningError as SupervisorNotRunningError
from .errors import UnknownChildError as UnknownChildError
from .supervisor import ChildCounts as ChildCounts
from .supervisor import ChildInfo as ChildInfo
from .supervisor import ChildSpec as ChildSpec
from .supervisor import Registry as Registry
from .supervisor import Supervisor as Supervisor

__version__ = "0.1.0"

__all__ = [
    "ChannelUnavailableError",
    "ChildCounts",
    "ChildInfo",
    "ChildSpec",
    "ChildStartError",
    "ChildStateError",
    "ConnGRPCError",
    "DuplicateChildError",
    "NameTakenError",
    "NotConnectedError",
    "PoolNotStartedError",
    "Registry",
    "Supervisor",
    "SupervisorError",
    "SupervisorGaveUpError",
    "SupervisorNotRunningError",
    "UnknownChildError",
    "__version__",
    "telemetry",
]
