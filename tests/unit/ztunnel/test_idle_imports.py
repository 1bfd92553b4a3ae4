"""An idle ztunnel does not carry what only an option or another component needs: the
OpenTelemetry SDK (only with --otlp-logs-endpoint) and PyYAML (only the controller reads
manifests). Each was about 1-2 MB of the ztunnel's idle RSS (docs/scale.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
NOT_AT_IDLE = ("opentelemetry", "yaml", "jsonschema")


def imported_after(statement: str) -> set[str]:
    probe = f"{statement}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return {name.split(".")[0] for name in json.loads(out)}


def test_the_ztunnel_entry_point_imports_no_otel_nor_yaml() -> None:
    loaded = imported_after("import ztunnel.main")
    assert "ztunnel" in loaded and "grpc" in loaded  # the probe saw the real import
    assert not loaded & set(NOT_AT_IDLE), sorted(loaded & set(NOT_AT_IDLE))


def test_an_otlp_sink_and_a_manifest_still_bring_them_in() -> None:
    loaded = imported_after(
        "from meshcore.otlplogs import OtlpLogs\n"
        "from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter\n"
        "OtlpLogs(InMemoryLogRecordExporter(), 'ztunnel', 'ztunnel').shutdown()\n"
        "from meshcore.resources.loader import documents_from_text\n"
        "documents_from_text('kind: Namespace\\n', 'x.yaml')\n"
    )
    assert {"opentelemetry", "yaml"} <= loaded
