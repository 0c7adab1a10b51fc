"""The pieces a notebook's training runs: for each exercise, the learner's function once its check passed, the tested
one until then. The training calls `pieces.<name>(...)` where it would call `ru.<name>(...)`, so the same lines run
either way; a learner's function that fails inside the training is caught at that call, named, and replaced by the
tested one for the rest of the run."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from .engine import CheckResult, as_outputs, check


class Pieces:
    """Which function runs each piece of one notebook's training: the learner's (checked) or the tested one.

    `check(name, my_fn)` runs the exercise's check and, when it passes, installs `my_fn`; `pieces.<name>(...)`
    calls the one installed; `report()` shows which runs. `tested` is where the tested functions live (the notebook
    passes `rlhf_utils`); `device` and `precision` are the training's, on which every check also runs the learner's
    function once.
    """

    def __init__(self, notebook: str, tested: Any, device: torch.device | None = None, precision: Any = None):
        from . import EXERCISES

        self._exercises = {name: ex for name, ex in EXERCISES.items() if ex.notebook == notebook}
        self._tested, self._device, self._precision = tested, device, precision
        self._mine: dict[str, Callable[..., Any]] = {}
        self._why: dict[str, str] = {name: "your exercise is not done yet" for name in self._exercises}

    # ------------------------------------------------------------------ checking and installing

    def check(self, name: str, fn: Callable[..., Any], **settings: Any) -> CheckResult:
        """Check the learner's `fn` for exercise `name`; if it passes, the training uses it from now on."""
        exercise = self._exercise(name)
        result = check(exercise, fn, self._reference(name), settings, self._device, self._precision)
        if result.passed:
            self._mine[name] = fn
            self._why[name] = "yours: it passed its check"
        else:
            self._mine.pop(name, None)
            self._why[name] = {
                "not done": "your exercise is not done yet",
                "error": "yours raised an error in its check",
                "wrong": "yours did not pass its check yet",
            }[result.status]
        return result

    def uses_yours(self, name: str) -> bool:
        """Whether the training runs the learner's function for `name` now."""
        return name in self._mine

    def report(self, *names: str) -> Any:
        """A table: each piece the training runs (or those `names`), whose it is (yours or the tested one), and why."""
        import pandas as pd

        rows = [
            {
                "piece": name,
                "taught in": f"section {exercise.section}",
                "the training runs": "yours" if name in self._mine else f"ru.{name} (tested)",
                "why": self._why[name],
            }
            for name, exercise in self._exercises.items()
            if exercise.trains and (not names or name in names)
        ]
        return pd.DataFrame(rows).set_index("piece")

    def _reference(self, name: str) -> Callable[..., Any]:
        """The tested function of exercise `name` (a formula exercise's: its solution)."""
        if self._exercises[name].trains:
            return getattr(self._tested, name)
        from rlhf_support import solutions

        return getattr(solutions, name)

    def _exercise(self, name: str) -> Any:
        if name not in self._exercises:
            raise KeyError(f"No exercise {name!r} in this notebook; its exercises are {sorted(self._exercises)}.")
        return self._exercises[name]

    # ------------------------------------------------------------------ running a piece

    def __getattr__(self, name: str) -> Any:
        """pieces.<exercise>: the guarded function in use; any other name: the tested module's (ru.<name>)."""
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._exercises:
            return lambda *args, **kwargs: self.run(name, *args, **kwargs)
        return getattr(self._tested, name)

    def run(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Piece `name` on these arguments: the learner's function if installed (guarded), else the tested one."""
        tested = getattr(self._tested, name)
        mine = self._mine.get(name)
        if mine is None:
            return tested(*args, **kwargs)
        exercise = self._exercises[name]
        try:
            out = mine(*args, **kwargs)
            problem = self._problem(name, tested, out, args, kwargs)
        except Exception as error:  # noqa: BLE001  (a learner's code may raise anything: name it, go on)
            problem = f"raised {type(error).__name__}: {error}"
        if problem is None:
            outputs = as_outputs(out, len(exercise.outputs))
            if exercise.tested_extras:  # e.g. a loss's statistics: the learner writes the loss, the tested one counts
                with torch.no_grad():
                    outputs += list(tested(*args, **kwargs)[len(outputs) :])
            return tuple(outputs) if len(outputs) > 1 else outputs[0]
        del self._mine[name]
        self._why[name] = f"yours {problem} inside the training, so the tested one took over"
        print(
            f"Your {name} (the exercise of section {exercise.section}) {problem} inside the training. The training "
            f"goes on with the tested ru.{name} from this step on; fix yours and run its check again."
        )
        return tested(*args, **kwargs)

    def _problem(self, name: str, tested: Callable[..., Any], out: Any, args: tuple, kwargs: dict) -> str | None:
        """What is wrong with a learner's output inside the training (None: nothing seen)."""
        exercise = self._exercises[name]
        inputs = inspect.signature(tested).bind(*args, **kwargs).arguments
        outputs = as_outputs(out, len(exercise.outputs))
        if len(outputs) < len(exercise.outputs):
            return f"returned {len(outputs)} value(s) where {len(exercise.outputs)} are needed"
        for output, value, shape in zip(exercise.outputs, outputs, exercise.shapes(inputs)):
            if not isinstance(value, torch.Tensor):
                return f"returned a {type(value).__name__} as its {output}, where a tensor is needed"
            if tuple(value.shape) != tuple(shape):
                return f"returned its {output} with shape {tuple(value.shape)}, where {tuple(shape)} is needed"
            if exercise.differentiable and output == exercise.outputs[0]:
                needs_grad = any(getattr(inputs.get(k), "requires_grad", False) for k in exercise.differentiable)
                if needs_grad and value.grad_fn is None:
                    return f"returned a {output} that carries no gradient"
        finite = [bool(torch.isfinite(v).all()) for v in outputs]
        if not all(finite):
            expected = as_outputs(tested(*args, **kwargs), len(exercise.outputs))
            k = finite.index(False)
            if bool(torch.isfinite(expected[k]).all()):
                bad = "NaN" if bool(torch.isnan(outputs[k]).any()) else "inf"
                return f"returned {bad} in its {exercise.outputs[k]} where the tested one is finite"
        return None


class PPOPieces(Pieces):
    """Notebook 3's pieces, for one run's settings: step (5) and step (6)'s policy loss follow
    `advantage_estimator` (section 8), with the learner's GAE, estimator and loss where they passed their checks."""

    def __init__(self, cfg: Any, tested: Any, device: torch.device | None = None, precision: Any = None):
        super().__init__("3-RLHF", tested, device, precision)
        self._cfg = cfg

    def for_run(self, cfg: Any) -> PPOPieces:
        """These pieces (the same checked functions of yours) for another run's settings, e.g. section 8's."""
        other = PPOPieces(cfg, self._tested, self._device, self._precision)
        other._mine, other._why = self._mine, self._why  # shared: a failure in one run is seen by the other
        return other

    def compute_advantages(self, scores: torch.Tensor, rewards: torch.Tensor, values: torch.Tensor,
                           mask: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Step (5) for this run's advantage_estimator (`ru.compute_advantages`), with these pieces."""
        cfg = self._cfg
        return self._tested.compute_advantages(
            cfg.advantage_estimator, scores, rewards, values, mask, gamma, lam, cfg.samples_per_prompt,
            cfg.whiten_advantages, pieces=self,
        )  # fmt: skip

    def ppo_policy_loss(self, logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, clip_range: float) -> tuple[torch.Tensor, dict]:  # fmt: skip
        """Step (6)'s policy loss: PPO's token mean (yours once checked), or the average the estimator's paper uses."""
        averaging = self._tested.LOSS_AGGREGATION[self._cfg.advantage_estimator]
        if averaging == "token":
            loss, stats = self.run("ppo_policy_loss", logprobs, old_logprobs, advantages, mask, clip_range)
        else:
            loss, stats = self._tested.clipped_policy_loss(
                logprobs, old_logprobs, advantages, mask, clip_range, averaging, self._cfg.response_length
            )
        if self.uses_yours("approx_kl"):  # the statistic policy/approx_kl, by your k3
            with torch.no_grad():
                stats = {**stats, "approx_kl": self.run("approx_kl", logprobs, old_logprobs, mask)}
        return loss, stats

    def report(self, *names: str) -> Any:
        """The table of `Pieces.report` for the PPO loop (or those `names`), with what section 8's setting changes."""
        table = super().report(*(names or [n for n in self._exercises if n != "dpo_loss"]))
        estimator = self._cfg.advantage_estimator
        if estimator != "gae" and "compute_gae" in table.index:
            table.loc["compute_gae", "the training runs"] = "not used: no critic"
            table.loc["compute_gae", "why"] = f"advantage_estimator={estimator!r} (section 8)"
            table.loc["ppo_value_loss", "the training runs"] = "not used: no critic"
            table.loc["ppo_value_loss", "why"] = f"advantage_estimator={estimator!r} (section 8)"
            averaging = self._tested.LOSS_AGGREGATION[estimator]
            if averaging != "token" and "ppo_policy_loss" in table.index:
                table.loc["ppo_policy_loss", "the training runs"] = f"ru.clipped_policy_loss ({averaging} average)"
                table.loc["ppo_policy_loss", "why"] = f"{estimator} averages the loss its own way (section 8)"
        if estimator != "grpo" and not names:
            table = table.drop(index="grpo_advantages", errors="ignore")
        return table
