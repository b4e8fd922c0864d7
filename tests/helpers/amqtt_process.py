"""Run an amqtt broker (pure Python MQTT) in a process of its own, until SIGTERM.

Usage: python amqtt_process.py HOST PORT [ACL_JSON]

Anonymous, in memory only (like the tests' Mosquitto with ``persistence false``). Prints
nothing; readiness is seen by the port accepting connections. ``ACL_JSON``: ``{"acl": [...],
"publish_acl": [...]}``, the topic filters anonymous clients may subscribe / publish to (either
key may be left out: no limit).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys

from amqtt.broker import Broker


async def _main(host: str, port: int, acl: dict[str, list[str]]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    plugins: dict[str, object] = {
        "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
    }
    if acl:
        plugins["amqtt.plugins.topic_checking.TopicAccessControlListPlugin"] = {
            key: {"anonymous": filters} for key, filters in acl.items()
        }
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
            "plugins": plugins,
        }
    )
    await broker.start()
    await stop.wait()
    await broker.shutdown()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    acl = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    asyncio.run(_main(sys.argv[1], int(sys.argv[2]), acl))
