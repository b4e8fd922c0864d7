"""The shipped unit under a real systemd (Debian 12, systemd 252), not only ``systemd-analyze``.

A Debian bookworm root file system is made once with ``debootstrap`` and cached in
``/var/cache/edge-agent-tests/`` under a hash of what goes into it (see ``helpers.nspawn``). Each
run copies it, builds the wheelhouse from this checkout (``scripts/wheelhouse``: the code under
test), and boots the copy with ``systemd-nspawn --private-network``. Inside, the agent is installed
offline from that wheelhouse as docs/install.md section 2 says, configured as section 3 says and
its unit installed as section 4 says. The broker (Debian's Mosquitto, started by the container's
systemd) and the PLC simulator run inside the container too: with a private network nothing
else is reachable, which also proves that the offline install needs no network.

Checked: start reaches ``active (running)`` through ``READY=1``; a bad configuration ends
``failed`` with no restart (``NRestarts=0``), and so does a missing credential file;
``systemctl reload`` with a bad file fails and the
running configuration stays; a stop drains and publishes ``offline``; the watchdog restarts a
frozen agent.

Needs root, ``debootstrap`` and ``systemd-nspawn`` (``scripts/test`` installs them). Skipped
without them, except in CI (``CI=true``), where that is a failure.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.configs import two_lines_on_one_plc
from helpers.nspawn import Container, ContainerError, cached_rootfs, unavailable

REPO = Path(__file__).resolve().parents[2]
CONF = "/etc/edge-agent/agent.yaml"
STATUS_TOPIC = "edge-agent/sup/status"
# The container boots, installs and runs the agent on a loaded 2-core machine: generous deadlines.
pytestmark = pytest.mark.timeout(900)


def good_config() -> str:
    return two_lines_on_one_plc(5020) + (
        "mqtt:\n  host: 127.0.0.1\n  port: 1883\n  publish_interval: 500ms\n"
        "prometheus: {enabled: false}\n"
    )


def bad_config() -> str:
    return good_config().replace("poll_interval:", "poll_intervall:")


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    why = unavailable()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the systemd test must run in CI, but it cannot: {why}", pytrace=False)
        pytest.skip(f"no real systemd for the unit test: {why}")
    work = tmp_path_factory.mktemp("systemd")
    try:
        rootfs = cached_rootfs(work / "debootstrap.log")
    except ContainerError as exc:
        pytest.fail(str(exc), pytrace=False)

    # The wheelhouse and its archive, as docs/install.md section 2 makes them.
    wheelhouse = work / "wheelhouse"
    subprocess.run(
        [str(REPO / "scripts" / "wheelhouse"), str(wheelhouse)],
        env={**os.environ, "PYTHON": sys.executable},
        check=True,
        capture_output=True,
        timeout=600,
    )
    box = Container(rootfs, work)
    try:
        with tarfile.open(box.root / "root" / "edge-agent-wheelhouse.tgz", "w:gz") as tar:
            tar.add(wheelhouse, arcname="wheelhouse")
        (box.root / "root" / "edge-agent.service").write_bytes(
            (REPO / "systemd" / "edge-agent.service").read_bytes()
        )
        (box.root / "root" / "install.md").write_bytes((REPO / "docs" / "install.md").read_bytes())
        box.boot()
        version = next(wheelhouse.glob("edge_agent-*.whl")).name.split("-")[1]
        venv = f"/opt/edge-agent/venv-{version}"
        # docs/install.md section 2 (offline: the container has no network at all).
        box.run(
            "cd /root && tar xzf edge-agent-wheelhouse.tgz"
            " && (cd wheelhouse && sha256sum -c --quiet SHA256SUMS)"
            f" && python3 -m venv {venv}"
            f" && {venv}/bin/pip install -q --no-index --find-links wheelhouse edge-agent"
            f" && ln -sfn {venv} /opt/edge-agent/venv",
            timeout_s=600,
        )
        # The PLC: the simulator from the same install, as a transient service.
        box.run(
            "systemd-run -q --unit=plc-sim -p DynamicUser=yes"
            " /opt/edge-agent/venv/bin/edge-agent-sim --lines 2 --no-opcua --modbus-port 5020"
        )
        # Section 3 (the configuration) and section 4 (the unit and the page it points at).
        box.run(
            "install -d -m 0755 /etc/edge-agent"
            f" && install -m 0644 /dev/stdin {CONF}"
            f" && /opt/edge-agent/venv/bin/edge-agent check-config {CONF}"
            " && cp /root/edge-agent.service /etc/systemd/system/"
            " && install -D -m 0644 /root/install.md /opt/edge-agent/docs/install.md"
            " && systemctl daemon-reload && systemctl enable -q edge-agent",
            stdin=good_config(),
        )
        yield box
    finally:
        box.close()


def show(box: Container, *props: str) -> dict[str, str]:
    out = box.run(f"systemctl show edge-agent -p {','.join(props)}").stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def wait_in(box: Container, condition: str, timeout_s: float = 120.0) -> None:
    """Poll the shell ``condition`` inside the container until it holds, with a deadline."""
    result = box.run(
        f"timeout {timeout_s:.0f} sh -c {shlex.quote(f'until {condition}; do sleep 0.2; done')}",
        check=False,
        timeout_s=timeout_s + 30,
    )
    assert result.returncode == 0, f"not true within {timeout_s:.0f} s: {condition}"


def journal(box: Container, since_cursor: str = "") -> str:
    after = f"--after-cursor='{since_cursor}'" if since_cursor else ""
    return box.run(f"journalctl -u edge-agent --no-pager -o cat {after}").stdout


def cursor(box: Container) -> str:
    out = box.run("journalctl -n 0 --show-cursor --no-pager").stdout
    return out.strip().rsplit("cursor: ", 1)[-1]


def wait_status(box: Container, status: str) -> None:
    """Until the retained presence message says ``status`` (published just after READY=1)."""
    wait_in(
        box,
        f'mosquitto_sub -h 127.0.0.1 -t {STATUS_TOPIC} -C 1 -W 5 | grep -q \'"status":"{status}"\'',
        timeout_s=60,
    )


def set_config(box: Container, text: str) -> None:
    box.run(f"cat > {CONF}", stdin=text)


@pytest.fixture
def fresh(container: Container) -> Iterator[Container]:
    """The unit stopped, reset and with the good configuration, before and after each test."""

    def reset() -> None:
        container.run(
            "systemctl stop edge-agent; systemctl reset-failed edge-agent;"
            " rm -rf /etc/systemd/system/edge-agent.service.d; systemctl daemon-reload",
            check=False,
        )
        set_config(container, good_config())

    reset()
    yield container
    reset()


def test_start_reaches_running_through_ready(fresh: Container) -> None:
    started = fresh.run("systemctl start edge-agent", check=False)
    assert started.returncode == 0, started.stderr + journal(fresh)
    state = show(
        fresh,
        "ActiveState",
        "SubState",
        "StatusText",
        "NRestarts",
        "Documentation",
        "UnitFileState",
    )
    assert state["UnitFileState"] == "enabled"
    assert (state["ActiveState"], state["SubState"]) == ("active", "running")
    # Type=notify: "active" only after READY=1, which carries this STATUS=.
    assert state["StatusText"] == "1 sources, 2 lines"
    assert state["NRestarts"] == "0"
    page = state["Documentation"].removeprefix("file://")
    assert fresh.run(f"test -s {page}", check=False).returncode == 0, f"{page} is not installed"
    wait_status(fresh, "online")


def test_bad_config_fails_once_without_restart(fresh: Container) -> None:
    set_config(fresh, bad_config())
    started = fresh.run("systemctl start edge-agent", check=False)
    assert started.returncode != 0
    state = show(fresh, "ActiveState", "SubState", "Result", "ExecMainStatus", "NRestarts")
    # A restart on the way would show as activating/auto-restart here.
    assert state == {
        "ActiveState": "failed",
        "SubState": "failed",
        "Result": "exit-code",
        "ExecMainStatus": "78",
        "NRestarts": "0",
    }
    # Longer than RestartSec=5: nothing restarts it later either.
    held = fresh.run(
        'timeout 12 sh -c \'while [ "$(systemctl show -P NRestarts edge-agent)" = 0 ]'
        " && systemctl is-failed -q edge-agent; do sleep 0.5; done'",
        check=False,
        timeout_s=60,
    )
    assert held.returncode == 124, show(fresh, "ActiveState", "SubState", "NRestarts")
    log = journal(fresh)
    assert "sources[0].poll_intervall: unknown key (did you mean 'poll_interval'?)" in log
    assert log.count("nothing was started") == 1


def test_a_missing_credential_fails_once_without_restart(fresh: Container) -> None:
    fresh.run(
        "mkdir -p /etc/systemd/system/edge-agent.service.d"
        " && printf '[Service]\\nLoadCredential=mqtt.password:/etc/edge-agent/mqtt.password\\n'"
        " > /etc/systemd/system/edge-agent.service.d/credentials.conf && systemctl daemon-reload"
    )
    started = fresh.run("systemctl start edge-agent", check=False)
    assert started.returncode != 0
    state = show(fresh, "ActiveState", "SubState", "ExecMainStatus", "NRestarts")
    assert state == {
        "ActiveState": "failed",
        "SubState": "failed",
        "ExecMainStatus": "243",
        "NRestarts": "0",
    }
    assert "status=243/CREDENTIALS" in journal(fresh)


def test_reload_of_a_bad_file_fails_and_the_old_config_runs_on(fresh: Container) -> None:
    fresh.run("systemctl start edge-agent")
    pid = show(fresh, "MainPID")["MainPID"]
    set_config(fresh, bad_config())
    mark = cursor(fresh)
    reloaded = fresh.run("systemctl reload edge-agent", check=False)
    assert reloaded.returncode != 0, "systemctl reload accepted a bad configuration"
    assert "poll_intervall: unknown key" in journal(fresh, mark)
    state = show(fresh, "ActiveState", "SubState", "MainPID", "NRestarts")
    assert state == {
        "ActiveState": "active",
        "SubState": "running",
        "MainPID": pid,
        "NRestarts": "0",
    }

    # SIGHUP sent some other way reaches the agent's own check: refused, in the journal.
    mark = cursor(fresh)
    fresh.run("systemctl kill -s HUP --kill-whom=main edge-agent")
    wait_in(
        fresh,
        f"journalctl -u edge-agent --no-pager -o cat --after-cursor='{mark}'"
        " | grep -q 'configuration reload refused'",
    )
    assert show(fresh, "ActiveState", "MainPID") == {"ActiveState": "active", "MainPID": pid}

    set_config(fresh, good_config())
    mark = cursor(fresh)
    reloaded = fresh.run("systemctl reload edge-agent", check=False)
    assert reloaded.returncode == 0, journal(fresh, mark)
    wait_in(
        fresh,
        f"journalctl -u edge-agent --no-pager -o cat --after-cursor='{mark}'"
        " | grep -q 'configuration reloaded'",
    )


def test_stop_drains_and_publishes_offline(fresh: Container) -> None:
    fresh.run("systemctl start edge-agent")
    wait_status(fresh, "online")
    mark = cursor(fresh)
    fresh.run("systemctl stop edge-agent")
    state = show(fresh, "ActiveState", "Result", "ExecMainStatus", "NRestarts")
    assert state == {
        "ActiveState": "inactive",
        "Result": "success",
        "ExecMainStatus": "0",
        "NRestarts": "0",
    }
    log = journal(fresh, mark)
    assert "stopping: sources first, then the engine, then the broker link" in log
    assert "INFO edge_agent.app: stopped" in log.splitlines(), log
    assert "stay in the outbox" not in log
    wait_status(fresh, "offline")


def test_watchdog_restarts_a_frozen_agent(fresh: Container) -> None:
    fresh.run(
        "mkdir -p /etc/systemd/system/edge-agent.service.d"
        " && printf '[Service]\\nWatchdogSec=6s\\nTimeoutAbortSec=5s\\nRestartSec=1s\\n'"
        " > /etc/systemd/system/edge-agent.service.d/watchdog.conf"
        " && systemctl daemon-reload && systemctl start edge-agent"
    )
    pid = show(fresh, "MainPID")["MainPID"]
    fresh.run(f"kill -STOP {pid}")
    wait_in(
        fresh,
        '[ "$(systemctl show -P NRestarts edge-agent)" -ge 1 ]'
        " && systemctl is-active -q edge-agent",
    )
    state = show(fresh, "ActiveState", "SubState", "MainPID", "NRestarts")
    assert state["MainPID"] not in {pid, "0"}
    assert (state["ActiveState"], state["SubState"], state["NRestarts"]) == (
        "active",
        "running",
        "1",
    )
    assert "Watchdog timeout" in fresh.run("journalctl --no-pager -o cat -u edge-agent").stdout
