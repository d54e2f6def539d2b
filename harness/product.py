"""What scenarios may name about the product under test, so that they import the harness alone.

The register map and the firmware's batching are wire facts that live in `protocol/`; a scenario
refers to them through here, and the harness stays free to change where they come from.
"""

from __future__ import annotations

from protocol.compression import BATCH_SAMPLES
from protocol.registers import DEFAULT_SELECTION, EXPORT_LIMIT_ADDRESS

__all__ = ["BATCH_SAMPLES", "DEFAULT_SELECTION", "EXPORT_LIMIT_ADDRESS"]
