"""Counter deltas: baseline, wraps, PLC resets, persistence (DESIGN §3)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from edge_agent.engine.counters import CounterDelta, CounterTracker


def test_first_value_is_the_baseline() -> None:
    c = CounterTracker(65536, 1.0)
    assert c.update(1234, 0.0) == CounterDelta(0)
    assert c.update(1240, 6.0) == CounterDelta(6)
    assert c.update(1240, 7.0) == CounterDelta(0)


def test_16_bit_wrap_is_counted_across_the_rollover() -> None:
    c = CounterTracker(65536, 1.0)
    c.update(65530, 100.0)
    # 10 s later at 1 s/part: (4 - 65530) mod 65536 = 10 parts, plausible (<= 10/1*2 + slack).
    d = c.update(4, 110.0)
    assert d == CounterDelta(10, wrapped=True, reset=False)


def test_plc_reset_counts_the_new_value() -> None:
    c = CounterTracker(65536, 1.0)
    c.update(40000, 100.0)
    # 1 s later: the modular delta (3 - 40000) mod 65536 = 25539 parts in 1 s is impossible at
    # 1 s/part: a reset; the 3 parts made since the reset are counted (not clamped to 0).
    d = c.update(3, 101.0)
    assert d == CounterDelta(3, wrapped=False, reset=True)
    assert c.update(5, 103.0) == CounterDelta(2)


def test_counter_without_rollover_going_down_is_a_reset() -> None:
    c = CounterTracker(None, 1.0)
    c.update(500, 0.0)
    assert c.update(499, 1000.0) == CounterDelta(499, reset=True)


def test_reset_hint_forces_a_reset_even_when_the_value_went_up() -> None:
    c = CounterTracker(65536, 1.0)
    c.update(10, 0.0)
    assert c.update(12, 1.0, reset_hint=True) == CounterDelta(12, reset=True)


def test_wrap_after_a_long_gap_is_plausible() -> None:
    c = CounterTracker(65536, 0.5)
    c.update(60000, 0.0)
    # 1 h at 0.5 s/part allows 7200 × 2 parts: (1000 - 60000) mod 65536 = 6536 is a wrap.
    assert c.update(1000, 3600.0) == CounterDelta(6536, wrapped=True)


def test_negative_value_after_a_reset_gives_no_negative_delta() -> None:
    c = CounterTracker(None, 1.0)
    c.update(5, 0.0)
    assert c.update(-3, 1.0).delta == 0


def test_state_round_trip_keeps_the_baseline() -> None:
    c = CounterTracker(65536, 1.0)
    c.update(100, 0.0)
    c.update(150, 50.0)
    saved = json.loads(json.dumps(c.state_dict()))
    again = CounterTracker.from_state(saved, 65536, 1.0)
    # Neither lost (the 10 parts since 150 count) nor double counted (150 is not counted again).
    assert again.update(160, 60.0) == CounterDelta(10)
    fresh = CounterTracker.from_state(None, 65536, 1.0)
    assert fresh.update(160, 60.0) == CounterDelta(0)


@given(
    st.lists(
        st.tuples(st.integers(0, 65535), st.floats(0.0, 1e4), st.booleans()),
        min_size=1,
        max_size=60,
    )
)
def test_deltas_are_never_negative(steps: list[tuple[int, float, bool]]) -> None:
    c = CounterTracker(65536, 1.0)
    t = 0.0
    for value, dt, hint in steps:
        t += dt
        d = c.update(value, t, reset_hint=hint)
        assert d.delta >= 0
        assert not (d.wrapped and d.reset)
        assert d.delta < 65536


@given(st.lists(st.integers(0, 12), min_size=1, max_size=100))
def test_a_real_counter_is_recovered_exactly_across_wraps(increments: list[int]) -> None:
    # A 16-bit counter polled every second at 1 s/part ideal, making up to 12 parts per poll
    # (the plausible maximum: 1 s / 1 s × margin 2 + slack 10), starting just below the rollover:
    # every wrap is recognised and the deltas add up to the true count.
    c = CounterTracker(65536, 1.0)
    total = 65500
    t = 0.0
    c.update(total % 65536, t)
    counted = 0
    for inc in increments:
        t += 1.0
        total += inc
        counted += c.update(total % 65536, t).delta
    assert counted == total - 65500
