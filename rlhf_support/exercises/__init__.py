"""The notebooks' exercises: what each asks for, its inputs and edge cases, its classic mistakes (sft.py, reward.py,
ppo.py, one module per notebook), how a learner's answer is checked (engine.py), and the pieces the training runs:
the learner's once checked, the tested ones until then (pieces.py).

The tested implementations come from rlhf_utils, passed in by the caller: this package never imports the teaching
core, so a checker can never agree with the core's own mistakes by calling it.
"""

from __future__ import annotations

from .engine import CheckResult, Exercise, Trial, check, mistake
from .ppo import ApproxKl, ComputeGae, ComputeRewards, DpoLoss, GrpoAdvantages, PpoPolicyLoss, PpoValueLoss
from .reward import PairwiseRewardLoss, ProbabilityRatio, ScoreAtLastToken
from .sft import CausalLmLoss, LmLabels, SftProbability

EXERCISES: dict[str, Exercise] = {
    exercise.name: exercise
    for exercise in (
        LmLabels(),
        CausalLmLoss(),
        SftProbability(),
        ScoreAtLastToken(),
        PairwiseRewardLoss(),
        ProbabilityRatio(),
        ComputeRewards(),
        ComputeGae(),
        PpoPolicyLoss(),
        PpoValueLoss(),
        ApproxKl(),
        GrpoAdvantages(),
        DpoLoss(),
    )
}


def solution(name: str) -> None:
    """Show the solution of exercise `name` (rlhf_support/solutions.py): read it after you have tried."""
    from rlhf_support import solutions
    from rlhf_support.reporting import show_source

    if name not in EXERCISES:
        raise KeyError(f"No exercise {name!r}; the exercises are {sorted(EXERCISES)}.")
    show_source(getattr(solutions, name))


__all__ = ["EXERCISES", "CheckResult", "Exercise", "Trial", "check", "mistake", "solution"]
