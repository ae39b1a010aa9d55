"""Where the simulation tests leave their figures for the session's summary line."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.simulation.runner import SimulationReport

__all__ = ["REPORT_DIR", "record_report", "summarise_reports"]

#: one JSON file per chunk of seeds; the session's terminal summary adds them up
REPORT_DIR = Path(os.environ.get("ONCEFLOW_SIM_REPORT_DIR", "build/simulation"))


def record_report(chunk: int, report: SimulationReport) -> None:
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    (REPORT_DIR / f"chunk-{chunk}.json").write_text(json.dumps({
        "seeds": report.seeds, "seconds": report.seconds, "units": report.units,
        "crashes": report.crashes, "failures": len(report.failures)}))


def summarise_reports() -> str | None:
    """`N seeds in T s ...` over the chunks this session ran (None: it ran none)."""
    files = sorted(REPORT_DIR.glob("chunk-*.json")) if REPORT_DIR.is_dir() else []
    if not files:
        return None
    chunks = [json.loads(f.read_text()) for f in files]
    return (f"simulation: {sum(c['seeds'] for c in chunks):,} seeds in "
            f"{sum(c['seconds'] for c in chunks):.1f} s of simulator time "
            f"({len(chunks)} chunks), {sum(c['units'] for c in chunks):,} units, "
            f"{sum(c['crashes'] for c in chunks):,} role crashes, "
            f"{sum(c['failures'] for c in chunks)} seeds failed")
