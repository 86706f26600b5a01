import pytest

from models.curves import first_reach


def test_first_reach_interpolates_between_bracketing_evaluations():
    assert first_reach([10, 20, 30], [5.0, 4.0, 3.0], 3.5) == pytest.approx(25.0)
    assert first_reach([10, 20], [5.0, 4.0], 5.0) == 10.0


def test_first_reach_is_none_when_never_reached_and_handles_higher_is_better():
    assert first_reach([1, 2], [5.0, 4.5], 4.0) is None
    assert first_reach([1, 2, 3], [0.2, 0.6, 0.9], 0.5, lower_is_better=False) == pytest.approx(1.75)


def test_first_reach_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="differ in length"):
        first_reach([1, 2], [1.0], 1.0)


def test_recovery_counts_rounds_until_the_curve_is_back_at_its_value_before_the_change():
    from models.curves import recovery

    rounds = list(range(8))
    values = [0.5, 0.6, 0.7, 0.55, 0.6, 0.72, 0.75, 0.8]
    r = recovery(rounds, values, 3)
    assert r["before"] == 0.7 and r["after"] == 0.55
    assert r["rounds_to_recover"] == 2  # round 5 is back above 0.7
    assert abs(r["dip"] - 0.15) < 1e-12  # the lowest point, 0.55, before recovering
    assert recovery(rounds, values, 5)["rounds_to_recover"] == 0 and recovery(rounds, values, 5)["dip"] == 0.0


def test_recovery_is_none_when_the_window_ends_before_the_curve_is_back():
    from models.curves import recovery

    rounds, values = list(range(6)), [0.5, 0.7, 0.4, 0.45, 0.9, 0.9]
    cut = recovery(rounds, values, 2, until_round=4)  # the next change comes at round 4
    assert cut["rounds_to_recover"] is None and abs(cut["dip"] - 0.3) < 1e-12 and cut["window_rounds"] == 2
    assert recovery(rounds, values, 2)["rounds_to_recover"] == 2
    assert recovery(rounds, values, 0)["before"] is None  # nothing before the change
    assert recovery(rounds, values, 9)["after"] is None  # the change never took effect
