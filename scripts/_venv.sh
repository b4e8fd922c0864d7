# Sourced by scripts/test and scripts/demo: makes ./.venv and installs the project with EXTRAS.
# On a fresh Debian, python3 -m venv needs the python3-venv package: install it when we can.
export PATH="$PATH:/usr/sbin"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    if ! "$PY" -m venv .venv 2>/dev/null; then
        rm -rf .venv
        echo "scripts: python3 -m venv failed; installing python3-venv" >&2
        SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv python3-pip >/dev/null
        "$PY" -m venv .venv
    fi
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[${EXTRAS}]"
