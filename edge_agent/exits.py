"""The process exit codes of every ``edge-agent`` command, in one place.

The numbers are the BSD ``sysexits.h`` ones where one fits, so a supervisor (systemd's
``RestartPreventExitStatus=78`` in ``systemd/edge-agent.service``) or a script can tell a bad
configuration from a broker that is down. They are part of the command line's contract.
"""

from __future__ import annotations

from typing import Final

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1  # anything else that went wrong; the log says what
EXIT_USAGE: Final = 64  # EX_USAGE: the command line is wrong
EXIT_DATAERR: Final = 65  # EX_DATAERR: an input row is bad (replay's CSV)
EXIT_NOINPUT: Final = 66  # EX_NOINPUT: an input file cannot be read (replay's CSV, the history)
# EX_UNAVAILABLE: a source with on_startup_error: fail could not start; watch: no broker
EXIT_UNAVAILABLE: Final = 69
EXIT_CANTCREAT: Final = 73  # EX_CANTCREAT: the state directory or an output file cannot be used
EXIT_CONFIG: Final = 78  # EX_CONFIG: the configuration is invalid; nothing was started
EXIT_INTERRUPTED: Final = 130  # 128 + SIGINT, as a shell reports it
