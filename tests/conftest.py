"""Shared fixtures: the anyio backends every backend-neutral test runs on."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Backend-neutral tests run once on asyncio and once on trio."""
    return str(request.param)
