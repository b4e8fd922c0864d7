"""Run an MqttSink in a process of its own, to be killed by a test (last-will checks).

Usage: python sink_process.py HOST PORT SITE OUTBOX_PATH
"""

from __future__ import annotations

import asyncio
import sys

from edge_agent.config.schema import MqttConfig
from edge_agent.sinks.mqtt import MqttSink
from edge_agent.sinks.outbox import Outbox


async def _main(host: str, port: int, site: str, outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    try:
        sink = MqttSink(MqttConfig(host=host, port=port, timeout_s=5.0), site=site, outbox=outbox)
        await sink.run()
    finally:
        outbox.close()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]))
