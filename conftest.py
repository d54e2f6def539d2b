"""Repository-wide pytest configuration: the vectors directory and hypothesis profiles."""

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

VECTORS_DIR = Path(__file__).parent / "fixtures" / "vectors"

settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=50, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    return VECTORS_DIR
