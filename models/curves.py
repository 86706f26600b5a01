"""Learning-curve arithmetic for arm comparisons (SpacTor vs SC; active-learning arms).

``first_reach`` answers: at what x (steps, FLOPs, annotated characters) does a curve first get to a
target value? It interpolates linearly between the two evaluations that bracket the target, and returns
None when the curve never gets there.
"""

from __future__ import annotations

from typing import Sequence


def first_reach(xs: Sequence[float], ys: Sequence[float], target: float, *, lower_is_better: bool = True) -> float | None:
    if len(xs) != len(ys):
        raise ValueError(f"xs and ys differ in length ({len(xs)} vs {len(ys)})")

    def ok(y: float) -> bool:
        return y <= target if lower_is_better else y >= target

    for i, (x, y) in enumerate(zip(xs, ys)):
        if ok(y):
            if i == 0:
                return float(x)
            x0, y0 = xs[i - 1], ys[i - 1]
            if y == y0:
                return float(x)
            return float(x0 + (target - y0) * (x - x0) / (y - y0))
    return None


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min, max and count of per-seed values."""
    vals = [float(v) for v in values]
    if not vals:
        return {"n": 0}
    mean = sum(vals) / len(vals)
    std = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(vals), "max": max(vals), "n": len(vals)}


def first_fraction_reaching(candidates: Sequence[tuple[float, float, float]], target: float, *,
                            higher_is_better: bool = True) -> tuple[float, float] | None:
    """Of ``(steps_fraction, flops_fraction, score)`` runs, the smallest steps fraction whose score reaches
    ``target`` (>= when higher is better), with its FLOPs fraction; None if none does.

    This is the downstream form of the SpacTor claim: separately trained runs of a shorter budget, each
    fine-tuned, against the baseline's score at its full budget.
    """
    ok = [(s, f) for s, f, v in candidates if (v >= target if higher_is_better else v <= target)]
    return min(ok) if ok else None


def recovery(rounds: Sequence[int], values: Sequence[float], change_round: int, *,
             until_round: int | None = None) -> dict[str, float | int | None]:
    """How a learning curve (higher is better) recovers from a change that takes effect at ``change_round``.

    ``before`` is the value at the last round before the change; ``after`` the value at the change's round
    (its first evaluation under the change); ``dip`` = before - the lowest value from the change's round up
    to the recovery (0 when the curve never falls below ``before``); ``rounds_to_recover`` the rounds after
    the change's round until the curve is back at ``before`` (0: it never fell below; None: not within the
    window, which ends before ``until_round``, typically the next change, or at the last round).
    Returns None values when the curve has no round before the change or none at it.
    """
    if len(rounds) != len(values):
        raise ValueError(f"rounds and values differ in length ({len(rounds)} vs {len(values)})")
    by_round = dict(zip((int(r) for r in rounds), (float(v) for v in values)))
    prior = [r for r in by_round if r < change_round]
    window = sorted(r for r in by_round if r >= change_round and (until_round is None or r < until_round))
    empty = {"before": None, "after": None, "dip": None, "rounds_to_recover": None, "window_rounds": len(window)}
    if not prior or not window or window[0] != change_round:
        return empty
    before = by_round[max(prior)]
    lowest, recovered = float("inf"), None
    for r in window:
        if by_round[r] >= before:
            recovered = r - change_round
            break
        lowest = min(lowest, by_round[r])
    dip = 0.0 if recovered == 0 else before - lowest  # not recovered at once: the change's round set lowest
    return {"before": before, "after": by_round[change_round], "dip": dip, "rounds_to_recover": recovered,
            "window_rounds": len(window)}
