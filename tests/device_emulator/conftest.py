"""Fixtures shared by the emulator's component tests: the stand-in cloud and an HTTP session."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.device_emulator.component_board import StandInCloud


@pytest.fixture
async def cloud() -> AsyncIterator[StandInCloud]:
    async with StandInCloud() as stand_in:
        yield stand_in
    assert stand_in.errors == []


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client
