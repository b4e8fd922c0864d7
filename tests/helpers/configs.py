"""YAML configuration pieces shared by the integration tests."""

from __future__ import annotations


def two_lines_on_one_plc(
    modbus_port: int, *, line2_ideal: str = "1s", source_extra: str = ""
) -> str:
    """``version``, ``site: sup``, one Modbus source ``plc1`` (the simulator's two lines' total
    counters at registers 1 and 101, polled every 200 ms) and the lines ``line1`` and ``line2``.
    ``source_extra``: more keys of the source, one ``key: value`` per line. The caller adds
    ``mqtt``, ``prometheus`` and ``storage``."""
    extra = "".join(f"    {line}\n" for line in source_extra.splitlines() if line.strip())
    return f"""
version: 1
site: sup
sources:
  - name: plc1
    protocol: modbus
    host: 127.0.0.1
    port: {modbus_port}
    poll_interval: 200ms
    timeout: 1s
{extra}    tags:
      - {{name: total1, address: 1}}
      - {{name: total2, address: 101}}
lines:
  - name: line1
    ideal_cycle_time: 1s
    signals: {{total_count: {{tag: plc1.total1, rollover: 65536}}}}
  - name: line2
    ideal_cycle_time: {line2_ideal}
    signals: {{total_count: {{tag: plc1.total2, rollover: 65536}}}}
"""
