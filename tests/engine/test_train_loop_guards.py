"""The training loop never applies, checkpoints or saves a non-finite update."""

from pathlib import Path

import pytest
import torch

from engine import checkpoints
from engine.train_loop import LoopSettings, NonFiniteTrainingError, run, worker_threads


class _Toy:
    """A linear model whose loss turns NaN (or inf) from ``bad_step`` on."""

    def __init__(self, bad_step: int, poison: float):
        torch.manual_seed(0)
        self.model = torch.nn.Linear(4, 1)
        self.bad_step, self.poison = bad_step, poison
        self.saved = False

    def loss(self, model, step, micro, rank, world):
        x = torch.ones(8, 4)
        loss = model(x).pow(2).mean()
        if step >= self.bad_step:
            loss = loss * self.poison
        return loss, {}

    def tokens_per_micro(self):
        return 8

    def step_flops(self, step, world):
        return 1

    def evaluate(self, step):
        return {}

    def periodic(self, step):
        return {}

    def save_final(self, out_dir: Path):
        self.saved = True
        torch.save(self.model.state_dict(), out_dir / "w.pt")


@pytest.mark.reliability
@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_a_non_finite_loss_stops_training_at_that_step_and_keeps_the_last_good_checkpoint(tmp_path, poison):
    toy = _Toy(bad_step=6, poison=poison)
    settings = LoopSettings(total_steps=10, lr=1e-2, checkpoint_dir=str(tmp_path), checkpoint_every=4, in_ray=False)
    with pytest.raises(NonFiniteTrainingError, match=r"step 7: .*not finite.*step-00000004"):
        run(toy, settings)
    assert [p.name for p in checkpoints.list_checkpoints(tmp_path)] == ["step-00000004"]
    assert checkpoints.verify(tmp_path / "step-00000004") is None
    assert not (tmp_path / "final").exists() and not toy.saved
    assert torch.isfinite(toy.model.weight).all()  # the bad update was never applied


def test_workers_share_the_machines_cpus_unless_told_otherwise():
    assert worker_threads(3, 1) == 3
    assert worker_threads(0, 1) >= 1 and worker_threads(0, 10_000) == 1
