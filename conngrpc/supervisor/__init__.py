"""A generic, gRPC-free OTP-style supervision tree on anyio (asyncio and trio)."""

from .child import ChildCounts as ChildCounts
from .child import ChildInfo as ChildInfo
from .child import ChildState as ChildState
from .intensity import RestartIntensity as RestartIntensity
from .registry import Registry as Registry
from .spec import ChildSource as ChildSource
from .spec import ChildSpec as ChildSpec
from .spec import StartFunction as StartFunction
from .spec import to_child_spec as to_child_spec
from .supervisor import Supervisor as Supervisor

__all__ = [
    "ChildCounts",
    "ChildInfo",
    "ChildSource",
    "ChildSpec",
    "ChildState",
    "Registry",
    "RestartIntensity",
    "StartFunction",
    "Supervisor",
    "to_child_spec",
]
