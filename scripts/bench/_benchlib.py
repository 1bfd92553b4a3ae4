"""What the lab benchmarks share (not a benchmark: the smoke test skips `_` files): driving a
lab, CPU seconds from /proc, medians over interleaved rounds, stopping helper processes."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def lab(
    name: str, *args: str, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`weftctl lab --name NAME ARGS...`, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "weftctl.main", "lab", "--name", name, *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=timeout,
    )


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (gone ones count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass
    return total / CLK_TCK


def median(values: list[float], digits: int = 3) -> float:
    return round(statistics.median(values), digits)


def medians(
    rounds_seen: dict[str, list[dict[str, Any]]], digits: int = 3
) -> dict[str, dict[str, Any]]:
    """Per way: each figure's median over the rounds (`failed` summed), and the rounds."""
    return {
        way: {
            **{
                key: (
                    sum(r[key] for r in seen)
                    if key == "failed"
                    else median([r[key] for r in seen], digits)
                )
                for key in seen[0]
            },
            "rounds": seen,
        }
        for way, seen in rounds_seen.items()
    }


def stop(processes: list[subprocess.Popen[Any]]) -> None:
    """Terminate, then kill what does not stop within 5 s."""
    for p in processes:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
