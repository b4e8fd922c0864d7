"""``edge-agent-sim``: run packaging-line simulators over Modbus TCP and OPC UA.

Prints one line per listening server on stdout as soon as it listens, e.g.::

    modbus tcp://127.0.0.1:40123 unit 1
    opcua opc.tcp://127.0.0.1:40124/

(``modbus rtu_over_tcp://...`` or ``modbus rtu:/dev/pts/3 units 1,2`` with the RTU options),
then runs until SIGINT or SIGTERM and exits 0. Logs go to stderr.

With ``--opcua-security DIR`` the OPC UA server offers only signed and encrypted endpoints, with
the certificate ``DIR/simulator-opcua.der`` (created with its key on first use), and one more
line says how to trust it::

    opcua-certificate /path/DIR/simulator-opcua.der sha256 AB:CD:...
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from simulators.modbus_server import UNIT_ID
from simulators.opcua_server import APPLICATION_URI, SimSecurity
from simulators.runner import Simulation
from simulators.scenarios import Fault, Scenario

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


def _unit_ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected unit ids like 1,2, got {text!r}") from None
    if any(not 1 <= unit <= 247 for unit in ids):
        raise argparse.ArgumentTypeError(f"unit ids must be 1..247, got {text!r}")
    return ids


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
        "--opcua-security",
        metavar="DIR",
        type=Path,
        default=None,
        help="OPC UA with Basic256Sha256 / Aes128_Sha256_RsaOaep / Aes256_Sha256_RsaPss only; "
        "the server certificate and key are kept in DIR (created if missing)",
    )
    parser.add_argument(
        "--modbus-transport",
        choices=("tcp", "rtu_over_tcp", "rtu"),
        default="tcp",
        help="Modbus framing: tcp, RTU frames over TCP, or RTU on --serial-port (tcp)",
    )
    parser.add_argument(
        "--serial-port", help="serial device for --modbus-transport rtu, e.g. /dev/ttyUSB0"
    )
    parser.add_argument(
        "--parity",
        choices=("N", "E", "O"),
        default="E",
        help="serial parity for --modbus-transport rtu (E; use N on a socat pty pair)",
    )
    parser.add_argument(
        "--unit-ids",
        type=_unit_ids,
        help="one Modbus unit id per line, e.g. 1,2: each line is its own device at address 0",
    )
    parser.add_argument(
        "--initial-count",
        type=int,
        default=0,
        help="start every total counter here, e.g. 65500 to see a 16-bit wrap soon (0)",
    )
    parser.add_argument(
        "--fault",
        choices=[f.value for f in Fault],
        default=None,
        help="repeat a fault: drop, restart (counters reset), stall, busy, illegal (Modbus"
        " exceptions 6 / 2), garbage (Modbus noise), bad-status (OPC UA); see"
        " docs/simulators.md",
    )
    parser.add_argument(
        "--fault-every", type=_positive_float, default=30.0, help="seconds between faults (30)"
    )
    parser.add_argument(
        "--fault-for", type=_positive_float, default=5.0, help="seconds each fault lasts (5)"
    )
    return parser


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    scenario = (
        Scenario(fault=Fault(args.fault), every_s=args.fault_every, duration_s=args.fault_for)
        if args.fault
        else None
    )
    security = _security(args.opcua_security, args.host) if args.opcua_security else None
    try:
        async with Simulation(
            lines=args.lines,
            seed=args.seed,
            speed=args.speed,
            host=args.host,
            modbus_port=None if args.no_modbus else args.modbus_port,
            opcua_port=None if args.no_opcua else args.opcua_port,
            initial_count=args.initial_count,
            scenario=scenario,
            opcua_security=security,
            modbus_transport=args.modbus_transport,
            modbus_serial_port=args.serial_port,
            modbus_unit_ids=args.unit_ids,
            modbus_parity=args.parity,
        ) as sim:
            units = ",".join(map(str, args.unit_ids)) if args.unit_ids else str(UNIT_ID)
            label = "units" if args.unit_ids else "unit"
            if args.modbus_transport == "rtu" and not args.no_modbus:
                print(f"modbus rtu:{args.serial_port} {label} {units}", flush=True)
            elif sim.modbus_port is not None:
                url = f"{args.modbus_transport}://{args.host}:{sim.modbus_port}"
                print(f"modbus {url} {label} {units}", flush=True)
            if sim.opcua_endpoint is not None:
                print(f"opcua {sim.opcua_endpoint}", flush=True)
                if security is not None:
                    print(
                        f"opcua-certificate {security.cert_file} sha256 {_sha256(security)}",
                        flush=True,
                    )
            await stop.wait()
            logger.info("stopping")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _security(directory: Path, host: str) -> SimSecurity:
    from edge_agent.certs import make_opcua_certificate  # noqa: PLC0415 - only when asked

    cert, key = directory / "simulator-opcua.der", directory / "simulator-opcua.key.pem"
    if not (cert.exists() and key.exists()):
        make_opcua_certificate(
            directory,
            application_uri=APPLICATION_URI,
            common_name="edge-agent simulator",
            hostnames=sorted({host, "localhost", "127.0.0.1"}),
            cert_name=cert.name,
            key_name=key.name,
            overwrite=True,
        )
    return SimSecurity(cert, key)


def _sha256(security: SimSecurity) -> str:
    from edge_agent.certs import fingerprint, load_certificate  # noqa: PLC0415

    return fingerprint(load_certificate(security.cert_file.read_bytes()))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``edge-agent-sim``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    if args.fault and not args.fault_every > args.fault_for:
        print("edge-agent-sim: --fault-every must be longer than --fault-for", file=sys.stderr)
        return 2
    if args.modbus_transport == "rtu" and not args.serial_port and not args.no_modbus:
        print("edge-agent-sim: --modbus-transport rtu needs --serial-port", file=sys.stderr)
        return 2
    if args.unit_ids is not None and len(args.unit_ids) != args.lines:
        print("edge-agent-sim: --unit-ids needs one unit id per line", file=sys.stderr)
        return 2
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
