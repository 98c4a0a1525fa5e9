"""What the reference documents: the modules whose ``__all__`` is conngrpc's public API.

Plain data, importable without the docs extra (tests/test_reference.py reads it too).
"""

#: The public modules, in the order a short name in a docstring is looked up.
PUBLIC_MODULES = (
    "conngrpc",
    "conngrpc.sync",
    "conngrpc.telemetry",
    "conngrpc.otel",
    "conngrpc.testing",
)
