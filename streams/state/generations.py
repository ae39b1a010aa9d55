"""How long dedupe marks are kept: a rule shared by the RocksDB and the in-memory state.

The shell marks every input it decided, so that a redelivery (after a crash,
the inputs since the last checkpoint; a producer's retry, the record again)
is not decided twice. Kept for ever, the marks are most of a long-running
partition's state. They are filed by generation instead, and a whole
generation is dropped at once: a generation ends when the partition's clock
(the newest logged time among the facts it decided) has moved into the next
retention horizon *and* at least `min_marks` inputs were marked in it. The
time rule keeps a horizon's marks; the count rule keeps a clock that jumps
(one input from a node whose clock runs a week ahead) from dropping the marks
of inputs a crash is about to deliver again. The current generation and the
one before are kept; has_seen looks in both.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MarkGenerations", "retention_step_ms"]


def retention_step_ms(horizon_ms: int) -> int:
    """A sixteenth of the horizon: how often a role looks again for what to forget (and a
    quiet scheduler partition says it forgot nothing), so that a check is a fact a step,
    not a scan an input."""
    return max(1, horizon_ms // 16)


@dataclass
class MarkGenerations:
    horizon_ms: int
    min_marks: int
    #: the newest logged time marked
    clock: int = 0
    #: the current generation's number, and the horizon bucket it began in
    generation: int = 0
    bucket: int = 0
    #: inputs marked in the current generation
    marks: int = 0

    def mark(self, at: int) -> int | None:
        """Count one mark made at logged time `at`; the generation below which marks are
        to be dropped when this mark starts a new generation (None: it does not)."""
        self.clock = max(self.clock, at)
        self.marks += 1
        if not self.horizon_ms:
            return None
        bucket = self.clock // self.horizon_ms
        if bucket <= self.bucket or self.marks <= self.min_marks:
            return None
        self.generation += 1
        self.bucket, self.marks = bucket, 1
        return self.generation - 1

    def to_state(self) -> str:
        return f"{self.clock}:{self.generation}:{self.bucket}:{self.marks}"

    @classmethod
    def from_state(cls, raw: str | None, horizon_ms: int, min_marks: int) -> MarkGenerations:
        if not raw:
            return cls(horizon_ms, min_marks)
        clock, generation, bucket, marks = (int(x) for x in raw.split(":"))
        return cls(horizon_ms, min_marks, clock, generation, bucket, marks)
