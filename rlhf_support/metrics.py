"""The PPO loop's metrics, step (7) of notebook 3: masked statistics over the response tokens, one minibatch step's
statistics, and one iteration's namespaced metrics, read back from the device at once (section 5 explains each)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .guards import grad_norm_metrics


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over the positions where mask is 1 (0 where the mask is empty)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Population variance of x over the masked positions (0 for a single element, not NaN)."""
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var(R - V) / Var(R) over masked tokens: 1 = perfect values, 0 = no better than a constant."""
    return 1 - masked_var(returns - values, mask) / masked_var(returns, mask).clamp(min=1e-8)


def minibatch_stats(
    pg_loss: torch.Tensor,
    vf_loss: torch.Tensor,
    pg_stats: Mapping[str, torch.Tensor],
    vf_stats: Mapping[str, torch.Tensor],
    grad_norm: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """One minibatch step's losses, clip statistics and gradient norm, as scalar tensors (read back once per
    iteration, by `ppo_metrics`)."""
    return {
        "loss/policy": pg_loss.detach(),
        "loss/value": vf_loss.detach(),
        "policy/clipfrac": pg_stats["clipfrac"],
        "policy/approx_kl": pg_stats["approx_kl"],
        "value/clipfrac": vf_stats["clipfrac"],
        "policy/grad_norm": grad_norm.detach(),
    }


def ppo_metrics(
    *,
    raw_scores: torch.Tensor,
    threshold: float,
    scores: torch.Tensor,
    has_eos: torch.Tensor,
    kl: torch.Tensor,
    entropy: torch.Tensor,
    values: torch.Tensor,
    returns: torch.Tensor,
    response_mask: torch.Tensor,
    mb_stats: Sequence[Mapping[str, torch.Tensor]],
    kl_coef: float,
    scaler: torch.amp.GradScaler,
    iteration: int,
) -> dict[str, float]:
    """The namespaced metrics of one PPO iteration (notebook 3, section 5, explains each), read back at once.

    Per episode (B,): raw_scores (positive: above `threshold`), scores, has_eos; per token (B, R): the rest. mb_stats
    holds one `minibatch_stats` dict per step of the PPO epochs (averaged here; a gradient norm that fp16 skipped is
    counted, not averaged).
    """
    kl_per_sequence = kl.sum(1)  # (B,)
    steps = [{name: value for name, value in step.items() if name != "policy/grad_norm"} for step in mb_stats]
    on_device = {
        "env/score_mean": scores.mean(),
        "env/score_std": scores.std(),
        "env/raw_score_mean": raw_scores.mean(),
        "env/positive_share": (raw_scores > threshold).float().mean(),
        "env/eos_share": has_eos.float().mean(),
        "env/response_length": response_mask.sum(1).float().mean(),
        "objective/kl": kl_per_sequence.mean(),
        "objective/rlhf_reward": (scores - kl_coef * kl_per_sequence).mean(),  # = the sum of r_t over a response
        "policy/entropy": masked_mean(entropy, response_mask),
        "value/explained_variance": explained_variance(values, returns, response_mask),
        **{name: torch.stack([step[name] for step in steps]).mean() for name in steps[0]},
    }
    metrics = dict(zip(on_device, torch.stack([v.float() for v in on_device.values()]).tolist()))  # one copy
    grad_norms = torch.stack([step["policy/grad_norm"] for step in mb_stats])
    metrics.update(grad_norm_metrics(grad_norms, scaler, "policy", iteration))
    metrics["objective/kl_coef"] = float(kl_coef)
    return metrics
