"""``python -m benchmarks [--quick] [--json PATH]``: see :mod:`benchmarks.run`."""

from benchmarks.run import main

raise SystemExit(main())
