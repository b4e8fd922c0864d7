"""Performance benchmarks of the edge agent, each figure measured beside its reference.

Run ``python -m benchmarks`` (full, a few minutes) or ``python -m benchmarks --quick`` (under a
minute); ``--json PATH`` also writes the figures. The run starts its own simulated PLCs and a
Mosquitto broker on free loopback ports. See docs/performance.md.
"""
