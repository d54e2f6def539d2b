"""A compression batch: 7 samples of the selected registers, linearised sample-major (§2.3)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from protocol.errors import CodecError
from protocol.registers import REGISTER_COUNT

BATCH_SAMPLES = 7  # samples per packet in the firmware (SampleBatch)
MAX_COUNT = 255  # every header stores count & 0xFF; the firmware never exceeds 70


def check_layout(layout: Sequence[int]) -> tuple[int, ...]:
    """The register layout as a tuple, or CodecError (it comes from the upload document)."""
    regs = tuple(layout)
    if not regs:
        raise CodecError("empty register layout", regs)
    for reg in regs:
        if not isinstance(reg, int) or isinstance(reg, bool) or not 0 <= reg < REGISTER_COUNT:
            raise CodecError("register layout names an unknown register", regs)
    return regs


@dataclass(frozen=True)
class Batch:
    """Raw uint16 values (`count = samples * n`) with the RegID of each sample's columns."""

    values: tuple[int, ...]
    layout: tuple[int, ...]

    def __post_init__(self) -> None:
        check_layout(self.layout)
        count = len(self.values)
        if count == 0 or count % len(self.layout) or count > MAX_COUNT:
            raise CodecError(f"a batch holds 1..{MAX_COUNT} values, whole samples", count)
        if any(not 0 <= v <= 0xFFFF for v in self.values):
            raise CodecError("register values are uint16", self.values)

    @classmethod
    def from_samples(cls, samples: Sequence[Sequence[int]], layout: Sequence[int]) -> Batch:
        n = len(layout)
        if any(len(sample) != n for sample in samples):
            raise CodecError("every sample needs one value per register of the layout", n)
        return cls(tuple(v for sample in samples for v in sample), tuple(layout))

    @property
    def count(self) -> int:
        return len(self.values)

    @property
    def samples(self) -> int:
        return len(self.values) // len(self.layout)

    @property
    def registers(self) -> tuple[int, ...]:
        """`sel[i]`: the RegID of every position (the layout repeated once per sample)."""
        return self.layout * self.samples

    def rows(self) -> list[list[int]]:
        n = len(self.layout)
        return [list(self.values[i : i + n]) for i in range(0, self.count, n)]
