"""Every benchmark in scripts/bench/ still runs: each with --smoke (tiny counts, no figures
checked), bounded in time, exiting 0 and leaving nothing behind. A benchmark that rots
(a port taken by a later component, a renamed option) fails here, not on a user's machine."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.lab.labtools import leftovers, state_dir

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "scripts" / "bench"
SMOKE_TIMEOUT_S = 90  # each takes 5-25 s on a shared 2-core machine
SCRIPTS = [
    "capture_overhead.py",
    "controller_scale.py",
    "lab_updown.py",
    "waypoint_ext_authz.py",
    "waypoint_inproc.py",
    "waypoint_ratelimit.py",
    "waypoint_vs_haproxy.py",
    "ztunnel_tail.py",
    "ztunnel_memory.py",
    "ztunnel_vs_stunnel.py",
    "ztunnel_workers.py",
]


def test_every_benchmark_is_smoke_tested() -> None:
    benchmarks = [p.name for p in BENCH.glob("*.py") if not p.name.startswith("_")]
    assert sorted(benchmarks) == sorted(SCRIPTS)  # `_` files are shared code, not benchmarks


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_runs_in_smoke_mode_and_cleans_up(script: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / script), "--smoke"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # so a run that overstays is stopped with all it started
    )
    try:
        out, err = proc.communicate(timeout=SMOKE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"{script} --smoke took over {SMOKE_TIMEOUT_S}s\n{err[-3000:]}")
    assert proc.returncode == 0, f"{script} --smoke exited {proc.returncode}\n{err[-3000:]}"
    assert out.strip(), "a benchmark reports on stdout"
    # What it made: labs (named in `lab NAME (id ID) up` lines) and working folders.
    for name, lab_id in re.findall(r"lab (\S+) \(id ([0-9a-f]{6})\) up", err):
        assert leftovers(lab_id) == []
        assert not state_dir(name).exists()
    for folder in re.findall(r"working in (\S+)", err):
        assert not Path(folder).exists()
    no_lab = (
        "controller_scale.py",
        "waypoint_ext_authz.py",
        "waypoint_inproc.py",
        "waypoint_ratelimit.py",
        "ztunnel_memory.py",
    )
    if script not in no_lab:
        assert re.search(r"\(id [0-9a-f]{6}\) up", err), "a lab benchmark names its lab"
