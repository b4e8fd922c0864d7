"""Decodes Sparkplug B payloads with Eclipse Tahu's JavaScript reference implementation
(``scripts/sparkplug/decode.mjs``), independent of the agent's encoder. ``scripts/test``
installs it with ``npm ci``; a test that needs it fails (never skips) when it is missing."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

TOOL_DIR = Path(__file__).resolve().parents[2] / "scripts" / "sparkplug"
INSTALL_HINT = "run ./scripts/test, or: npm ci --ignore-scripts --prefix scripts/sparkplug"


def tahu_decode(payloads: list[bytes]) -> list[dict[str, Any]]:
    """Each payload decoded by Tahu: ``{timestamp, seq, metrics: [{name, type, value, ...}]}``."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"node is not installed: the Sparkplug B check needs it ({INSTALL_HINT})")
    if not (TOOL_DIR / "node_modules" / "sparkplug-payload").is_dir():
        pytest.fail(f"the Tahu Sparkplug decoder is not installed ({INSTALL_HINT})")
    lines = "\n".join(base64.b64encode(p).decode() for p in payloads) + "\n"
    res = subprocess.run(
        [node, str(TOOL_DIR / "decode.mjs")],
        input=lines,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    out = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(out) == len(payloads)
    return out
