"""Guards against failed runs: a non-finite loss stops training (an fp16 step whose gradients overflowed is counted
and skipped, `grad_norm_metrics`); a run that ended worse than it started is not saved over a better model."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .checkpoints import verify_checkpoint
from .errors import CheckpointError, RLHFError, TrainingDivergedError


def stop_if_diverged(what: str, step: int, **values: float) -> None:
    """Raise TrainingDivergedError naming the quantity and the step when a value is NaN or infinite."""
    for name, value in values.items():
        if not math.isfinite(value):
            raise TrainingDivergedError(
                f"{what}: {name} became {value} at iteration/step {step}. Training stopped; the last good "
                "checkpoint is untouched. Lower the learning rate, or try precision='fp32'."
            )


def grad_norm_metrics(
    grad_norms: torch.Tensor, scaler: torch.amp.GradScaler, prefix: str, step: int = 0
) -> dict[str, float]:
    """Metrics of one or more optimizer steps' gradient norms (as `optimizer_step` returns them).

    With fp16 loss scaling, a step whose gradients overflowed reports an infinite norm and was skipped: it
    is counted in {prefix}/skipped_steps and left out of the mean {prefix}/grad_norm, so the history holds no
    inf. Without a scaler nothing skips an infinite gradient, so it stops training (TrainingDivergedError).
    """
    norms = grad_norms.detach().float().flatten()  # one per optimizer step
    taken = torch.isfinite(norms)
    skipped = int((~taken).sum())
    if skipped and not scaler.is_enabled():
        stop_if_diverged(prefix, step, grad_norm=float(norms[~taken][0]))
    metrics = {f"{prefix}/skipped_steps": float(skipped)}
    if skipped < len(norms):
        metrics[f"{prefix}/grad_norm"] = float(norms[taken].mean())
    return metrics


def data_fingerprint(rows: Sequence[Sequence[int]]) -> str:
    """A short hash of token-id rows (e.g. the validation set): equal fingerprints mean the same data."""
    return hashlib.sha256(json.dumps([list(map(int, r)) for r in rows]).encode()).hexdigest()[:16]


def failed_run_reasons(
    values: Sequence[float], higher_is_better: bool, margin: float, saved: float | None = None
) -> list[str]:
    """What is wrong with a run whose validation metric went `values` (first = before training), if anything.

    Three signs of a run that diverged without ever reaching NaN: it ended more than `margin` worse than it
    started, than its own best point, or than `saved` (the value of the model already saved, measured on the
    same data).
    """
    sign = 1.0 if higher_is_better else -1.0
    first, last = values[0], values[-1]
    best_i = max(range(len(values)), key=lambda i: sign * values[i])
    problems = []
    if sign * (first - last) > margin:
        problems.append(f"it ended worse than it started ({first:.4g} before training, {last:.4g} at the end)")
    if sign * (values[best_i] - last) > margin:
        problems.append(
            f"it ended at {last:.4g}, far from its best point ({values[best_i]:.4g}, "
            f"validation {best_i} of {len(values) - 1})"
        )
    if saved is not None and sign * (saved - last) > margin:
        problems.append(
            f"the model already saved there scored {saved:.4g} on the same validation data, this one {last:.4g}"
        )
    return problems


def save_unless_worse(
    save: Callable[[str], Any],
    folder: str,
    metric: str,
    values: Sequence[float],
    higher_is_better: bool,
    margin: float,
    data: str,
    save_worse: bool = False,
) -> str:
    """Save a trained model with `save(folder)`, unless the run looks diverged (`failed_run_reasons`): then save it
    beside, to folder + '.rejected', keep the model already in `folder`, and raise an RLHFError saying why.

    `data` fingerprints the validation data; a saved model's value counts only when it was measured on the same.
    The model's meta should record {"validation": {"metric": metric, "value": values[-1], "data": data}}.
    """
    saved = None
    if Path(folder).is_dir():
        try:
            record = verify_checkpoint(folder, deep=False).get("validation", {})
        except CheckpointError:
            record = {}
        if record.get("metric") == metric and record.get("data") == data:
            saved = float(record["value"])
    problems = [] if save_worse else failed_run_reasons(values, higher_is_better, margin, saved)
    if not problems:
        save(folder)
        return folder
    rejected = folder + ".rejected"
    save(rejected)
    raise RLHFError(
        f"This run's {metric} looks like a failed run: " + "; ".join(problems) + ". It was saved to "
        f"{rejected}, not to {folder}"
        + (" (which keeps the better model)" if saved is not None else "")
        + ". A metric that gets worse during training usually means a learning rate that is too high. "
        "To use this model anyway, set save_worse_model=True (RLHF_SAVE_WORSE_MODEL=1) and run again."
    )
