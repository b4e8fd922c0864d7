"""Operator stop reasons in the engine (edge_agent.engine.stops): a stop's unspecified loss time
moved to the reason an operator gives it, split in two, undone; a PLC reason wins; the actions
are samples, so the same samples give the same report (replay); they survive a restart."""

from __future__ import annotations

from typing import Any

from test_line_engine import DAY, T0, M, line_cfg, signals, smp

from edge_agent.config.schema import LossCategory, ReasonSignal, StopReason
from edge_agent.engine.line import LineEngine
from edge_agent.engine.stops import OPERATOR_SOURCE
from edge_agent.model import Quality, Sample

REASONS = (
    StopReason(name="jam", category=LossCategory.BREAKDOWN),
    StopReason(name="no_material", category=LossCategory.MATERIAL),
)


def engine(**kw: Any) -> LineEngine:
    return LineEngine(line_cfg(shifts=(DAY,), stop_reasons=REASONS, **kw), site="s")


_seq = iter(range(1, 10_000))


def act(
    stop: float, reason: int, t: float, *, split: float = 0.0, reason2: int = 0
) -> list[Sample]:
    """The samples the operator page sends for one action (action numbers increase)."""
    values = {"stop": stop, "split": split, "reason2": reason2, "reason": reason}
    values["action"] = next(_seq)
    return [
        Sample(OPERATOR_SOURCE, f"line1.{tag}", v, Quality.GOOD, None, t)
        for tag, v in values.items()
    ]


def run_stop(e: LineEngine, samples: list[Sample] | None = None) -> list[Sample]:
    """Running 06:00, idle 06:10-06:20 (a stop of 600 s), running again."""
    out = [
        smp("plc.state", 1, T0),
        smp("plc.total", 0, T0),
        smp("plc.rejects", 0, T0),
        smp("plc.state", 2, T0 + 10 * M),
        smp("plc.state", 1, T0 + 20 * M),
    ]
    for s in out + (samples or []):
        e.ingest(s)
    return out


def reasons(e: LineEngine, t: float) -> dict[str, float]:
    return dict(e.snapshot(t).loss_time_by_reason_s)


def test_classify_split_undo() -> None:
    e = engine()
    run_stop(e)
    assert reasons(e, T0 + 30 * M) == {"unspecified": 600.0}
    [stop] = e.stops.stops
    assert (stop.start, stop.end, stop.state) == (T0 + 10 * M, T0 + 20 * M, "idle")
    for s in act(stop.start, 1, T0 + 31 * M):
        e.ingest(s)
    assert reasons(e, T0 + 32 * M) == {"jam": 600.0}
    report = e.snapshot(T0 + 32 * M)
    assert [(r.reason, r.time_s) for r in report.top_downtime_reasons] == [("jam", 600.0)]
    # Split at 06:14: the first 240 s a jam, the rest waiting for material.
    for s in act(stop.start, 1, T0 + 33 * M, split=T0 + 14 * M, reason2=2):
        e.ingest(s)
    assert reasons(e, T0 + 34 * M) == {"jam": 240.0, "no_material": 360.0}
    # Undo: back to unspecified.
    for s in act(stop.start, 0, T0 + 35 * M):
        e.ingest(s)
    assert reasons(e, T0 + 36 * M) == {"unspecified": 600.0}
    assert e.take_notices() == []


def test_bad_actions_change_nothing_and_say_why() -> None:
    e = engine()
    run_stop(e)
    start = e.stops.stops[0].start
    for samples in (
        act(start + 5, 1, T0 + 31 * M),  # no stop starts then
        act(start, 3, T0 + 31 * M),  # no reason 3
        act(start, 1, T0 + 31 * M, split=T0 + 25 * M, reason2=2),  # split outside the stop
    ):
        for s in samples:
            e.ingest(s)
    assert reasons(e, T0 + 32 * M) == {"unspecified": 600.0}
    assert e.take_notices() == [
        "operator action not applied: no ended stop of this shift starts then",
        "operator action not applied: unknown reason code 3",
        "operator action not applied: the split time is not inside the stop",
    ]


def test_a_plc_reason_wins() -> None:
    """06:10-06:20 idle: the PLC gives reason 12 for the first 5 min, then no usable reason:
    the operator's reason takes only the unspecified 300 s."""
    sig = signals(reason=ReasonSignal(tag="plc.reason", map={12: "tool_change"}))
    e = engine(signals=sig)
    for s in [
        smp("plc.state", 1, T0),
        smp("plc.total", 0, T0),
        smp("plc.rejects", 0, T0),
        smp("plc.reason", 12, T0 + 10 * M),
        smp("plc.state", 2, T0 + 10 * M),
        smp("plc.reason", 0, T0 + 15 * M, Quality.BAD),
        smp("plc.state", 1, T0 + 20 * M),
    ]:
        e.ingest(s)
    assert reasons(e, T0 + 30 * M) == {"tool_change": 300.0, "unspecified": 300.0}
    for s in act(T0 + 10 * M, 1, T0 + 31 * M):
        e.ingest(s)
    assert reasons(e, T0 + 32 * M) == {"tool_change": 300.0, "jam": 300.0}


def test_operator_reason_wins_when_the_line_says_so() -> None:
    """The same stop with operator_reason_wins: the operator's reason takes all 600 s, the
    split's second part takes the PLC's part too, and an undo gives the PLC its 300 s back."""
    sig = signals(reason=ReasonSignal(tag="plc.reason", map={12: "tool_change"}))
    e = engine(signals=sig, operator_reason_wins=True)
    for s in [
        smp("plc.state", 1, T0),
        smp("plc.total", 0, T0),
        smp("plc.rejects", 0, T0),
        smp("plc.reason", 0, T0 + 10 * M, Quality.BAD),
        smp("plc.state", 2, T0 + 10 * M),
        smp("plc.reason", 12, T0 + 15 * M),
        smp("plc.state", 1, T0 + 20 * M),
    ]:
        e.ingest(s)
    assert reasons(e, T0 + 30 * M) == {"unspecified": 300.0, "tool_change": 300.0}
    for s in act(T0 + 10 * M, 1, T0 + 31 * M):
        e.ingest(s)
    assert reasons(e, T0 + 32 * M) == {"jam": 600.0}
    for s in act(T0 + 10 * M, 1, T0 + 33 * M, split=T0 + 12 * M, reason2=2):
        e.ingest(s)
    assert reasons(e, T0 + 34 * M) == {"jam": 120.0, "no_material": 480.0}
    for s in act(T0 + 10 * M, 0, T0 + 35 * M):
        e.ingest(s)
    assert reasons(e, T0 + 36 * M) == {"unspecified": 300.0, "tool_change": 300.0}


def test_operator_reason_wins_across_a_restart_during_a_stop() -> None:
    """With operator_reason_wins, a restart during a stop with a PLC reason ends the stop there
    with its PLC-reasoned time kept (the open piece included): it can then be classified, and an
    undo gives the PLC its time back."""
    sig = signals(reason=ReasonSignal(tag="plc.reason", map={12: "tool_change"}))
    live = engine(signals=sig, operator_reason_wins=True)
    for s in [
        smp("plc.state", 1, T0),
        smp("plc.total", 0, T0),
        smp("plc.rejects", 0, T0),
        smp("plc.reason", 12, T0 + 10 * M),
        smp("plc.state", 2, T0 + 10 * M),
        smp("plc.total", 0, T0 + 14 * M),  # the engine's time: 06:14, the stop still open
    ]:
        live.ingest(s)
    restored = engine(signals=sig, operator_reason_wins=True)
    restored.restore(live.state_dict())
    [stop] = restored.stops.stops
    assert (stop.start, stop.end) == (T0 + 10 * M, T0 + 14 * M)
    assert reasons(restored, T0 + 15 * M) == {"tool_change": 240.0}
    for s in act(T0 + 10 * M, 2, T0 + 16 * M):
        restored.ingest(s)
    assert reasons(restored, T0 + 17 * M)["no_material"] == 240.0
    for s in act(T0 + 10 * M, 0, T0 + 18 * M):
        restored.ingest(s)
    assert "no_material" not in reasons(restored, T0 + 19 * M)


def test_same_samples_same_report_and_kept_across_a_restart() -> None:
    live = engine()
    samples = run_stop(live)
    start = live.stops.stops[0].start
    actions = act(start, 1, T0 + 31 * M, split=T0 + 12 * M, reason2=2)
    for s in actions:
        live.ingest(s)
    # Replay: the same samples through a fresh engine.
    again = engine()
    for s in samples + actions:
        again.ingest(s)
    assert again.snapshot(T0 + 40 * M) == live.snapshot(T0 + 40 * M)
    # Restart: the classification stays, and an undo after it still works.
    restored = engine()
    restored.restore(live.state_dict())
    assert reasons(restored, T0 + 41 * M) == {"jam": 120.0, "no_material": 480.0}
    for s in act(start, 0, T0 + 42 * M):
        restored.ingest(s)
    assert reasons(restored, T0 + 43 * M) == {"unspecified": 600.0}


def as_history(samples: list[Sample], keyframe_at: float) -> list[Sample]:
    """What the sample history keeps of ``samples``: a sample only when its tag's value
    changed, then a keyframe (every tag's last value again) at ``keyframe_at``."""
    last: dict[tuple[str, str], Sample] = {}
    kept = []
    for s in samples:
        key = (s.source, s.tag)
        if key in last and last[key].value == s.value and last[key].quality is s.quality:
            continue
        last[key] = s
        kept.append(s)
    return kept + [s._replace(agent_time=keyframe_at) for s in last.values()]


def test_replay_of_the_history_gives_the_same_report() -> None:
    """Two stops, classified with repeated values (the history drops them) and a keyframe
    after the last action (it repeats the action number: not applied again)."""
    live = engine()
    samples = run_stop(live)
    more = [smp("plc.state", 2, T0 + 30 * M), smp("plc.state", 1, T0 + 35 * M)]
    for s in more:
        live.ingest(s)
    first, second = (stop.start for stop in live.stops.stops)
    actions = [
        *act(first, 1, T0 + 40 * M),
        *act(second, 1, T0 + 41 * M),  # same reason, split and reason2: dropped but the same
        *act(first, 2, T0 + 42 * M, split=T0 + 15 * M, reason2=1),
    ]
    for s in actions:
        live.ingest(s)
    expected = {"no_material": 300.0, "jam": 300.0 + 300.0}
    assert reasons(live, T0 + 50 * M) == expected
    replayed = engine()
    for s in as_history(samples + more + actions, T0 + 45 * M):
        replayed.ingest(s)
    assert replayed.snapshot(T0 + 50 * M) == live.snapshot(T0 + 50 * M)
    # A bad-quality mark (an outage in the history) applies nothing.
    for s in act(first, 0, T0 + 51 * M):
        replayed.ingest(s._replace(quality=Quality.BAD))
    assert reasons(replayed, T0 + 52 * M) == expected


def test_the_shift_note_is_in_the_shift_reports_and_kept_across_a_restart() -> None:
    e = engine()
    run_stop(e)
    assert e.snapshot(T0 + 30 * M).shift_note is None
    e.set_shift_note("die 7 changed; rejects from 10:00 are the old die", T0 + 31 * M)
    assert e.snapshot(T0 + 32 * M).shift_note == "die 7 changed; rejects from 10:00 are the old die"
    restored = engine()
    restored.restore(e.state_dict())
    # Past the day shift's end (14:00); finish(): its report now, without waiting to settle.
    reports = restored.finish(T0 + 8 * 60 * M + 1)
    [shift] = [r for r in reports if getattr(r, "closed", False) and r.window.kind == "shift"]
    assert shift.shift_note == "die 7 changed; rejects from 10:00 are the old die"
    assert restored.snapshot(T0 + 8 * 60 * M + 2).shift_note is None  # the next window has none
