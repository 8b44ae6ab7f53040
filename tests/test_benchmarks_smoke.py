"""The benchmarks run and print their figures (tiny sizes; no assertion on any figure's value)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run(script: str, *options: str) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *options],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=BENCHMARKS.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_burst_prints_both_runs_and_the_goals() -> None:
    out = run(
        "burst.py", "--deliveries", "8", "--lead", "1", "--workers", "8", "--concurrency", "4"
    )
    assert "crosspost " in out
    assert "APScheduler baseline" in out
    assert "8/8" in out
    assert "p99 lag" in out
    assert "baseline p99 / crosspost p99" in out


def test_idle_precision_prints_its_lags() -> None:
    out = run("idle_precision.py", "--posts", "2", "--min-lead", "0.2", "--max-lead", "0.3")
    assert "2/2" in out
    assert "p99 lag" in out


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_queue_scale_prints_every_figure(backend: str) -> None:
    out = run("queue_scale.py", "--rows", "400", "--claims", "5", "--backends", backend)
    for figure in ("add_many", "claim 10", "claim 1", "next_due", "worker peak RSS"):
        assert f"{backend}" in out and figure in out
    assert out.count("(goal") == 4
