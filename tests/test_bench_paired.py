"""dawin_fast.bench.paired: alternating rounds, median ratio and spread, the noise note;
timed with a fake clock, so that every number is known exactly."""

from __future__ import annotations

import pytest

from dawin_fast.bench import paired


class FakeClock:
    """A clock that each workload advances by its cost times the current slowdown (the
    machine's load, which a test changes between calls)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slowdown = 1.0

    def __call__(self) -> float:
        return self.now

    def work(self, seconds: float):
        def fn():
            self.now += seconds * self.slowdown
        return fn


def test_alternating_rounds_cancel_a_load_that_changes_between_rounds():
    clock = FakeClock()
    a, b = clock.work(1e-3), clock.work(2e-3)
    slowdowns = iter([1.0, 1.0, 8.0, 8.0, 3.0, 3.0])  # one value per sample: A B, B A, A B
    order = []

    def sample(fn):
        clock.slowdown = next(slowdowns)
        order.append("a" if fn is a else "b")
        return paired.wall_sampler(clock=clock)(fn)

    samples = paired.interleave({"a": a, "b": b}, rounds=3, sample=sample)
    assert order == ["a", "b", "b", "a", "a", "b"]
    assert samples == {"a": pytest.approx([1.0, 8.0, 3.0]), "b": pytest.approx([2.0, 16.0, 6.0])}
    ratio = paired.ratio(samples, "b", "a")
    assert ratio.median == pytest.approx(2.0)
    assert ratio.low == pytest.approx(2.0) and ratio.high == pytest.approx(2.0)
    assert ratio.relative_iqr == pytest.approx(0.0)
    assert paired.noise_note([ratio], load=0.5, cores=2) is None


def test_a_load_that_hits_one_side_of_some_rounds_shows_in_the_spread_and_the_note():
    samples = {"a": [1.0, 1.0, 1.0, 1.0], "b": [1.0, 3.0, 1.0, 3.0]}
    ratio = paired.ratio(samples, "b", "a")
    assert (ratio.median, ratio.q25, ratio.q75, ratio.low, ratio.high, ratio.rounds) == \
        (2.0, 1.0, 3.0, 1.0, 3.0, 4)
    assert ratio.format() == "2.00 (IQR 1.00–3.00, 4 rounds)"
    note = paired.noise_note([ratio, paired.spread([1.0, 1.0])], load=None, cores=2)
    assert note.startswith("Noisy: 1 of 2 ratios vary by more than 20% between rounds")
    assert "up to 100% of the median" in note


def test_the_note_names_a_load_average_above_the_core_count():
    quiet = paired.spread([1.0, 1.01, 0.99])
    assert paired.noise_note([quiet], load=2.0, cores=2) is None
    note = paired.noise_note([quiet], load=3.5, cores=2)
    assert "the load average was 3.5 on 2 cores" in note
    assert "vary" not in note


def test_the_sampler_times_its_calls_as_a_whole_and_synchronises_around_them():
    clock, events = FakeClock(), []
    costs = iter([5e-3, 1e-3, 3e-3])

    def fn():
        events.append("call")
        clock.now += next(costs)

    ms = paired.wall_sampler(calls=3, clock=clock, sync=lambda: events.append("sync"))(fn)
    assert ms == pytest.approx(3.0)  # 9 ms over 3 calls
    assert events == ["sync", "call", "call", "call", "sync"]


def test_each_side_gets_enough_calls_to_fill_a_sample():
    clock = FakeClock()
    fast, slow = clock.work(0.5e-3), clock.work(80e-3)
    assert paired.calls_for(fast, sample_ms=50.0, clock=clock) == 100
    assert paired.calls_for(slow, sample_ms=50.0, clock=clock) == 1
    samples = paired.time_side_by_side({"fast": fast, "slow": slow}, rounds=2,
                                       sample_ms=50.0, clock=clock)
    assert samples == {"fast": pytest.approx([0.5, 0.5]), "slow": pytest.approx([80.0, 80.0])}
    # calls_for twice above, then a warm-up, a calibration and 2 rounds of 100 + 1 calls
    assert clock.now == pytest.approx(3 * (0.5e-3 + 80e-3) + 2 * (100 * 0.5e-3 + 80e-3))


def test_the_load_watch_keeps_the_highest_value_seen():
    values = iter([1.0, 4.0, 2.0])
    watch = paired.LoadWatch(lambda: next(values))
    watch.check()
    assert watch.check() == 4.0


def test_records_note_reads_stored_ratios_and_loads():
    wide = paired.spread([1.0, 2.0, 3.0]).as_dict()
    assert paired.spread_from_dict(wide) == paired.spread([1.0, 2.0, 3.0])
    records = [{"vs": wide, "load_average": 0.1, "cores": 2}, {"vs": None}]
    assert "1 of 1 ratios" in paired.records_note(records, ("vs",))
    assert paired.records_note([{"load_average": 9.0, "cores": 2}], ("vs",)).startswith(
        "Noisy: the load average was 9.0")


def test_bad_rounds_and_empty_spreads_are_refused():
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        paired.interleave({"a": lambda: None}, rounds=0, sample=lambda fn: 1.0)
    with pytest.raises(ValueError, match="spread of no values"):
        paired.spread([])
