"""`python -m benchmarks --quick` runs to the end and prints every figure.

Timings are never asserted here (the machine is shared); whether targets pass is the
benchmark's business, not the test's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FIGURES = [
    "modbus_requests_ratio",
    "modbus_cpu_ratio",
    "drain_ratio",
    "opcua_cpu_ratio",
    "opcua_subscribe_notifications_per_s",
    "opcua_subscribe_vs_poll_cpu_pct",
    "latency_p50_ms",
    "latency_p99_ms",
    "cpu_1000_modbus_tags_1hz_pct",
    "cpu_1000_modbus_tags_1hz_uvloop_pct",
    "rss_mib",
    "scale_cpu_pct",
    "scale_skipped_ticks",
    "scale_rss_mib",
    "idle_cpu_pct",
    "cpu_1000_registers_1hz_pct",
    "tags_per_core_1hz",
    "fsyncs_per_batch_1000_tags",
]


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_quick_benchmark_prints_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert [f["key"] for f in doc["figures"]] == FIGURES
    for figure in doc["figures"]:
        assert figure["verdict"] in {"PASS", "MISS", "-"}
        assert figure["name"] in proc.stdout  # printed in the table
    assert f"{len(FIGURES)} figures" in proc.stdout
