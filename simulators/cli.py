"""``edge-agent-sim``: run packaging-line simulators over Modbus TCP and OPC UA.

Prints one line per listening server on stdout as soon as it listens, e.g.::

    modbus tcp://127.0.0.1:40123 unit 1
    opcua opc.tcp://127.0.0.1:40124/

then runs until SIGINT or SIGTERM and exits 0. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from simulators.modbus_server import UNIT_ID
from simulators.runner import Simulation

__all__ = ["main"]

logger = logging.getLogger("simulators.cli")


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0..65535, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0.0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent-sim",
        description="Simulate packaging lines as PLCs over Modbus TCP and OPC UA.",
    )
    parser.add_argument("--lines", type=_positive_int, default=2, help="number of lines (2)")
    parser.add_argument("--seed", type=int, default=1, help="random seed; line i uses seed+i (1)")
    parser.add_argument(
        "--speed", type=_positive_float, default=1.0, help="simulated seconds per real second (1)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument(
        "--modbus-port", type=_port, default=5020, help="Modbus TCP port, 0 = any free (5020)"
    )
    parser.add_argument(
        "--opcua-port", type=_port, default=4840, help="OPC UA port, 0 = any free (4840)"
    )
    parser.add_argument("--no-modbus", action="store_true", help="do not start the Modbus server")
    parser.add_argument("--no-opcua", action="store_true", help="do not start the OPC UA server")
    parser.add_argument(
        "--initial-count",
        type=int,
        default=0,
        help="start every total counter here, e.g. 65500 to see a 16-bit wrap soon (0)",
    )
    return parser


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with Simulation(
            lines=args.lines,
            seed=args.seed,
            speed=args.speed,
            host=args.host,
            modbus_port=None if args.no_modbus else args.modbus_port,
            opcua_port=None if args.no_opcua else args.opcua_port,
            initial_count=args.initial_count,
        ) as sim:
            if sim.modbus_port is not None:
                print(f"modbus tcp://{args.host}:{sim.modbus_port} unit {UNIT_ID}", flush=True)
            if sim.opcua_endpoint is not None:
                print(f"opcua {sim.opcua_endpoint}", flush=True)
            await stop.wait()
            logger.info("stopping")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``edge-agent-sim``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    if args.no_modbus and args.no_opcua:
        print("edge-agent-sim: nothing to run (--no-modbus and --no-opcua)", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # pymodbus logs every connection at INFO; its warnings are enough here.
    logging.getLogger("pymodbus").setLevel(logging.WARNING)
    try:
        asyncio.run(_serve(args))
    except OSError as exc:
        logger.error("cannot start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
