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
