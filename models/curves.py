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
