"""What a Ray training worker prints for the driver's terminal at each log step (Ray forwards worker stdout)."""

from engine.train_loop import progress_line


def test_progress_line_gives_step_fraction_loss_rate_and_time_left():
    line = progress_line(120, 400, {"loss": 5.9123, "step_time_s": 2.1})
    assert line == "step 120/400 (30%) | loss 5.912 | 2.10 s/step | 9 min 48 s left"


def test_progress_line_at_the_end_has_nothing_left_and_needs_no_loss():
    assert progress_line(10, 10, {"step_time_s": 0.5}) == "step 10/10 (100%) | 0.50 s/step | 0 s left"
