"""Running many seeds, and replaying one with its trace."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field

from tests.simulation.workload import run_seed

__all__ = ["SeedFailure", "SimulationReport", "replay_command", "run_seeds"]


def replay_command(seed: int) -> str:
    """The one command that replays a seed, with the trace of what it did."""
    return f"python -m tests.simulation --seed {seed} --trace"


@dataclass(frozen=True)
class SeedFailure:
    seed: int
    violation: str

    def describe(self) -> str:
        return f"seed {self.seed}: {self.violation}\n  replay: {replay_command(self.seed)}"


@dataclass
class SimulationReport:
    first: int
    seeds: int = 0
    seconds: float = 0.0
    units: int = 0
    crashes: int = 0
    moves: int = 0
    records: int = 0
    failures: list[SeedFailure] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.seeds:,} seeds ({self.first}..{self.first + self.seeds - 1}) in "
                f"{self.seconds:.1f} s: {self.units:,} units, {self.crashes:,} role crashes, "
                f"{self.moves:,} partitions moved, "
                f"{self.records:,} records; {len(self.failures)} failed")


def run_seeds(first: int, count: int) -> SimulationReport:
    """Run seeds `first` .. `first + count - 1`; a violated invariant (or a crash of the
    simulated system) is recorded with its seed, and the run goes on."""
    report = SimulationReport(first)
    began = time.perf_counter()
    for seed in range(first, first + count):
        try:
            result = run_seed(seed)
        except AssertionError as exc:
            report.failures.append(SeedFailure(seed, str(exc)))
        except Exception as exc:  # the system under test raised: a finding too
            report.failures.append(SeedFailure(seed, "".join(
                traceback.format_exception_only(type(exc), exc)).strip()))
        else:
            report.units += result.units
            report.crashes += result.crashes
            report.moves += result.moves
            report.records += result.records
        report.seeds += 1
    report.seconds = time.perf_counter() - began
    return report
