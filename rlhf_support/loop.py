"""What the PPO loop tracks besides PPO itself: the progress bar, the seconds each phase of an iteration took, when
the over-optimisation curve and a checkpoint are due, and the lines it prints (notebook 3, section 3.8). Notebook 3's
loop cell keeps the eight steps of the algorithm; `RunTracker` keeps the rest out of its way."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from rlhf_support.config import PPOConfig
from rlhf_support.device import device_clock
from rlhf_support.guards import stop_if_diverged
from rlhf_support.reporting import History, progress
from rlhf_support.resume import checkpoint_due as checkpoint_policy

PHASES = ("generate", "score", "optimise")  # the phases of one iteration, in order, each ended by a lap: time/<phase>_s
WATCHED = ("loss/policy", "loss/value", "objective/kl", "env/score_mean")  # a NaN or inf in one of these stops PPO


class RunTracker:
    """Tracks iterations start_iteration + 1 .. cfg.num_iterations of the PPO loop: a progress bar, the seconds of
    each phase (`device_clock`: read once the device is idle), and what is due (`resume.checkpoint_due`). The
    benchmark (benchmarks/ppo_bench.py) subclasses it to time the phases by name and skip the saves."""

    def __init__(self, cfg: PPOConfig, history: History, start_iteration: int, device: Any):
        self.cfg, self.history, self.start, self.device = cfg, history, start_iteration, device
        self.laps: dict[str, float] = {}
        self.saved_at = time.monotonic()
        self.bar: Any = None

    def iterations(self) -> Iterator[int]:
        """The iterations left, behind a progress bar; the clock starts at each one. Says so if none is left."""
        cfg = self.cfg
        self.bar = progress(range(self.start + 1, cfg.num_iterations + 1), desc="PPO", initial=self.start,
                            total=cfg.num_iterations)  # fmt: skip
        for iteration in self.bar:
            self.laps = {"start": device_clock(self.device)}
            yield iteration
        self.bar.close()
        if self.start >= cfg.num_iterations:
            print(
                f"Nothing to train: the checkpoint already holds all {cfg.num_iterations} iterations. Raise "
                "num_iterations to train on, or set RLHF_RESUME=0 to start over."
            )
        if cfg.checkpoint_dir:
            print(f"checkpoint: {cfg.checkpoint_dir}")

    def lap(self, phase: str) -> None:
        """The end of a phase of this iteration (one of PHASES)."""
        if phase not in PHASES:
            raise ValueError(f"phase {phase!r}: one of {PHASES}")
        self.laps[phase] = device_clock(self.device)

    def curve_due(self, iteration: int) -> bool:
        """Whether this iteration measures a point of the over-optimisation curve: every eval_every, and the last."""
        cfg = self.cfg
        return bool(cfg.curve_prompts) and (iteration % cfg.eval_every == 0 or iteration == cfg.num_iterations)

    def log(self, iteration: int, metrics: dict[str, float]) -> None:
        """Add the phase times (and the curve's, when it was measured) to the metrics and log them; update the bar."""
        marks = [self.laps["start"]] + [self.laps[phase] for phase in PHASES]
        metrics.update({f"time/{phase}_s": end - begin for phase, begin, end in zip(PHASES, marks, marks[1:])})
        if any(name.startswith("curve/") for name in metrics):
            metrics["time/curve_s"] = device_clock(self.device) - self.laps["optimise"]
        self.history.log(iteration, **metrics)
        self.bar.set_postfix(score=f"{metrics['env/score_mean']:.2f}", kl=f"{metrics['objective/kl']:.2f}")
        if iteration % self.cfg.samples_every == 0:
            self.bar.write(
                f"iteration {iteration}: score {metrics['env/score_mean']:.2f}, KL {metrics['objective/kl']:.2f}"
            )

    def stop_if_diverged(self, iteration: int, metrics: dict[str, float]) -> None:
        """Raise TrainingDivergedError if a WATCHED metric is NaN or infinite (the last checkpoint stays as it was)."""
        stop_if_diverged("PPO", iteration, **{name: metrics[name] for name in WATCHED})

    def checkpoint_due(self, iteration: int) -> bool:
        """Whether to save after this iteration (every checkpoint_every, after checkpoint_minutes, at the end); never
        when cfg.checkpoint_dir is '' (a short run that keeps nothing, such as section 8's)."""
        if not self.cfg.checkpoint_dir:
            return False
        due = checkpoint_policy(iteration, self.cfg, time.monotonic() - self.saved_at)
        if due:
            self.saved_at = time.monotonic()
        return due
