"""The exercises of 3-RLHF.ipynb: the KL-shaped rewards (3.4), GAE (3.5), the clipped policy and value losses and the
k3 estimate of how far an update moved the policy (3.6), and GRPO's advantages (section 8)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .engine import Exercise, Inputs, mistake
from .sft import right_mask


def _pick(rng: torch.Generator, values: Sequence[float]) -> float:
    """One of `values`, drawn with `rng`."""
    return float(values[int(torch.randint(len(values), (), generator=rng))])


def response_mask(rng: torch.Generator, batch: int = 4, width: int = 6, lengths: Sequence[int] | None = None):  # noqa: ANN201
    """(B, T) float mask of right-padded responses: random lengths (one full row, one shorter), or the `lengths` given."""
    if lengths is None:
        lengths = torch.randint(1, width + 1, (batch,), generator=rng).tolist()
        lengths[0], lengths[-1] = width, max(1, min(lengths[-1], width - 2))
    return right_mask(lengths, width).float()


def last_real(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last 1 (0 for an empty row), (B,)."""
    return (mask * torch.arange(mask.shape[1])).argmax(1)


def plus_score_at_end(rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """rewards (B, T) with each row's score added at its last real token (rows with no token get nothing)."""
    has = (mask.sum(1) > 0).to(rewards.dtype)
    return rewards.scatter_add(1, last_real(mask)[:, None], (scores * has)[:, None])


def describe_token(mask: torch.Tensor, index: tuple[int, ...]) -> str:
    """What position index = (row, t) of a response mask is: padding, the last real token, or a token."""
    row, t = index[0], index[1]
    if mask[row].sum() == 0:
        return "a row with no response tokens: everything there is 0"
    if mask[row, t] == 0:
        return "padding, where everything is 0"
    return "the row's last real token" if t == int(last_real(mask)[row]) else "a response token"


# -----------------------------------------------------------------------------
# (4) The KL-shaped rewards


def reward_inputs(rng: torch.Generator, mask: torch.Tensor, kl_coef: float) -> Inputs:
    """Scores (B,), log-probs of policy and reference (B, T) (noise on the padding too), the mask, beta."""
    batch, width = mask.shape
    logprobs = -torch.rand(batch, width, generator=rng) * 3
    ref_logprobs = logprobs + torch.randn(batch, width, generator=rng) * 0.5
    scores = torch.randn(batch, generator=rng)
    return {"scores": scores, "logprobs": logprobs, "ref_logprobs": ref_logprobs, "mask": mask, "kl_coef": kl_coef}


class ComputeRewards(Exercise):
    name, notebook, section = "compute_rewards", "3-RLHF", "3.4"
    asks_for = "(rewards, kl), both (B, T) and 0 on padding"
    outputs = ("rewards", "kl")
    rule = (
        "kl_t = log pi_t - log pi_ref_t on each response token; r_t = -beta kl_t, plus s on the row's last real "
        "token; both 0 on padding (and a row with no response token gets no score)."
    )

    def random_inputs(self, rng: torch.Generator, settings: Mapping[str, Any]) -> Inputs:
        return reward_inputs(rng, response_mask(rng), _pick(rng, [0.02, 0.05, 0.1, 0.2, 0.5]))

    def edge_cases(self, rng: torch.Generator, settings: Mapping[str, Any]) -> dict[str, Inputs]:
        return {
            "one-token responses": reward_inputs(rng, response_mask(rng, lengths=[1, 1, 3], width=3), 0.1),
            "rows without padding": reward_inputs(rng, response_mask(rng, lengths=[5, 5], width=5), 0.1),
            "a row with no response token": reward_inputs(rng, response_mask(rng, lengths=[4, 0, 2], width=4), 0.1),
            "beta = 0 (no KL penalty)": reward_inputs(rng, response_mask(rng), 0.0),
        }

    def describe(self, inputs: Inputs, output: str, index: tuple[int, ...]) -> str:
        return describe_token(inputs["mask"], index)

    def shapes(self, inputs: Inputs) -> tuple[tuple[int, ...], ...]:
        return (tuple(inputs["logprobs"].shape),) * 2

    @mistake
    def score_on_last_column(scores, logprobs, ref_logprobs, mask, kl_coef):  # noqa: ANN001, ANN201
        """the score goes on each row's last *real* token: responses end at different lengths, and the last column
        is padding for the short ones."""
        kl = (logprobs - ref_logprobs) * mask
        rewards = -kl_coef * kl
        rewards[:, -1] += scores
        return rewards, kl

    @mistake
    def kl_sign(scores, logprobs, ref_logprobs, mask, kl_coef):  # noqa: ANN001, ANN201
        """the KL is a penalty: r_t = -beta (log pi - log pi_ref), minus, so that drifting from the reference costs."""
        kl = (logprobs - ref_logprobs) * mask
        return plus_score_at_end(kl_coef * kl, scores, mask), kl

    @mistake
    def kl_reversed(scores, logprobs, ref_logprobs, mask, kl_coef):  # noqa: ANN001, ANN201
        """the log-ratio is log pi - log pi_ref (the policy's over the reference's): yours is turned around."""
        kl = (ref_logprobs - logprobs) * mask
        return plus_score_at_end(-kl_coef * kl, scores, mask), kl

    @mistake
    def kl_unmasked(scores, logprobs, ref_logprobs, mask, kl_coef):  # noqa: ANN001, ANN201
        """padding tokens are not part of the response: multiply the KL by the mask (the log-probs there are noise)."""
        kl = logprobs - ref_logprobs
        return plus_score_at_end(-kl_coef * kl, scores, mask), kl

    @mistake
    def score_on_every_token(scores, logprobs, ref_logprobs, mask, kl_coef):  # noqa: ANN001, ANN201
        """the score arrives once, with the last real token; the other tokens get only the KL term."""
        kl = (logprobs - ref_logprobs) * mask
        return (-kl_coef * kl + scores[:, None]) * mask, kl

    @mistake
    def score_in_empty_row(scores, logprobs, ref_logprobs, mask, kl_coef):  # noqa: ANN001, ANN201
        """a row with no response token has no last real token, so it gets no score: yours put it at position 0
        (the index of the last 1 in a row of zeros is read as 0). Multiply the score by whether the row has a token."""
        kl = (logprobs - ref_logprobs) * mask
        return (-kl_coef * kl).scatter_add(1, last_real(mask)[:, None], scores[:, None]), kl


# -----------------------------------------------------------------------------
# (5) GAE


def gae_inputs(rng: torch.Generator, mask: torch.Tensor, gamma: float, lam: float) -> Inputs:
    """Values and rewards (B, T) (the values non-zero on the padding too), the mask, gamma, lambda."""
    batch, width = mask.shape
    return {
        "values": torch.randn(batch, width, generator=rng),
        "rewards": torch.randn(batch, width, generator=rng) * mask,
        "mask": mask,
        "gamma": gamma,
        "lam": lam,
    }


def gae_loop(values, rewards, mask, gamma, lam, *, backwards=True, stop_at_end=True, lam_without_gamma=False):  # noqa: ANN001, ANN201
    """GAE row by row over the real tokens, with the switches that make its classic mistakes."""
    advantages = torch.zeros_like(values)
    batch, width = values.shape
    for b in range(batch):
        real = [t for t in range(width) if mask[b, t] > 0]
        next_value, next_advantage = 0.0, 0.0
        for t in reversed(real) if backwards else real:
            if not stop_at_end and t + 1 < width:
                next_value = values[b, t + 1]
            delta = rewards[b, t] + gamma * next_value - values[b, t]
            advantages[b, t] = delta + (lam if lam_without_gamma else gamma * lam) * next_advantage
            next_value, next_advantage = values[b, t], advantages[b, t]
    return advantages, (advantages + values) * mask


def _whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = (x * mask).sum() / mask.sum()
    var = (((x - mean) ** 2) * mask).sum() / mask.sum()
    return (x - mean) / torch.sqrt(var + 1e-8) * mask


class ComputeGae(Exercise):
    name, notebook, section = "compute_gae", "3-RLHF", "3.5"
    asks_for = "(advantages, returns), both (B, T) and 0 outside the mask"
    outputs = ("advantages", "returns")
    rule = (
        "backwards over each row's real tokens: delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lambda "
        "A_{t+1}, with V = A = 0 after the last one; returns = A + V; 0 on padding."
    )

    def random_inputs(self, rng: torch.Generator, settings: Mapping[str, Any]) -> Inputs:
        gamma = _pick(rng, [1.0, 0.9, 0.97])
        return gae_inputs(rng, response_mask(rng), gamma, float(torch.empty(()).uniform_(0.5, 0.97, generator=rng)))

    def edge_cases(self, rng: torch.Generator, settings: Mapping[str, Any]) -> dict[str, Inputs]:
        return {
            "one-token responses": gae_inputs(rng, response_mask(rng, lengths=[1, 1, 3], width=3), 0.9, 0.8),
            "rows without padding": gae_inputs(rng, response_mask(rng, lengths=[5, 5], width=5), 0.95, 0.9),
            "a row with no response token": gae_inputs(rng, response_mask(rng, lengths=[4, 0, 2], width=4), 1.0, 0.9),
            "lambda = 0 (one-step TD)": gae_inputs(rng, response_mask(rng), 0.9, 0.0),
            "gamma = lambda = 1 (Monte Carlo)": gae_inputs(rng, response_mask(rng), 1.0, 1.0),
        }

    def describe(self, inputs: Inputs, output: str, index: tuple[int, ...]) -> str:
        return describe_token(inputs["mask"], index)

    def shapes(self, inputs: Inputs) -> tuple[tuple[int, ...], ...]:
        return (tuple(inputs["values"].shape),) * 2

    @mistake
    def whiten_before_returns(values, rewards, mask, gamma, lam):  # noqa: ANN001, ANN201
        """compute returns = A + V from the raw advantages, and return those advantages: whitening is for the policy
        loss only, and comes after (the value head must learn the returns in reward units)."""
        advantages, _ = gae_loop(values, rewards, mask, gamma, lam)
        whitened = _whiten(advantages, mask)
        return whitened, (whitened + values) * mask

    @mistake
    def forwards(values, rewards, mask, gamma, lam):  # noqa: ANN001, ANN201
        """GAE runs backwards, from each row's last token: A_t needs A_{t+1}."""
        return gae_loop(values, rewards, mask, gamma, lam, backwards=False)

    @mistake
    def bootstrap_past_end(values, rewards, mask, gamma, lam):  # noqa: ANN001, ANN201
        """past a row's last real token the episode is over: take V = 0 and A = 0 there, not the value the head wrote
        on the padding."""
        return gae_loop(values, rewards, mask, gamma, lam, stop_at_end=False)

    @mistake
    def no_lambda(values, rewards, mask, gamma, lam):  # noqa: ANN001, ANN201
        """each step back multiplies A_{t+1} by gamma * lambda, not by gamma alone."""
        return gae_loop(values, rewards, mask, gamma, 1.0)

    @mistake
    def lambda_without_gamma(values, rewards, mask, gamma, lam):  # noqa: ANN001, ANN201
        """each step back multiplies A_{t+1} by gamma * lambda: yours leaves out gamma there (it shows when gamma < 1)."""
        return gae_loop(values, rewards, mask, gamma, lam, lam_without_gamma=True)

    @mistake
    def returns_without_values(values, rewards, mask, gamma, lam):  # noqa: ANN001, ANN201
        """the returns are A + V, the value head's target: yours leave out V."""
        advantages, _ = gae_loop(values, rewards, mask, gamma, lam)
        return advantages, advantages * mask


# -----------------------------------------------------------------------------
# (6) The clipped losses and the k3 estimate


def policy_loss_inputs(rng: torch.Generator, mask: torch.Tensor, clip_range: float, moved: float = 0.5) -> Inputs:
    """Log-probs now and at sampling (ratios well outside 1 +- epsilon unless moved = 0), advantages of both signs."""
    batch, width = mask.shape
    logprobs = -torch.rand(batch, width, generator=rng) * 3
    return {
        "logprobs": logprobs,
        "old_logprobs": logprobs + torch.randn(batch, width, generator=rng) * moved,
        "advantages": torch.randn(batch, width, generator=rng),
        "mask": mask,
        "clip_range": clip_range,
    }


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum()


def _objectives(logprobs, old_logprobs, advantages, clip_range, *, inverted=False):  # noqa: ANN001, ANN202
    """rho A and clip(rho, 1 - eps, 1 + eps) A, with rho = pi / pi_old (or, a mistake, pi_old / pi)."""
    ratio = torch.exp(old_logprobs - logprobs) if inverted else torch.exp(logprobs - old_logprobs)
    return ratio * advantages, torch.clamp(ratio, 1 - clip_range, 1 + clip_range) * advantages


class PpoPolicyLoss(Exercise):
    name, notebook, section = "ppo_policy_loss", "3-RLHF", "3.6"
    asks_for = "the clipped policy loss, a scalar tensor"
    outputs = ("loss",)
    rule = (
        "loss = -(masked mean over the response tokens of min(rho A, clip(rho, 1 - eps, 1 + eps) A)), "
        "rho = exp(logprobs - old_logprobs), eps = clip_range."
    )
    differentiable = ("logprobs",)
    tested_extras = True  # its statistics (clip fraction, approx KL)

    def random_inputs(self, rng: torch.Generator, settings: Mapping[str, Any]) -> Inputs:
        return policy_loss_inputs(rng, response_mask(rng), _pick(rng, [0.1, 0.2, 0.3]))

    def edge_cases(self, rng: torch.Generator, settings: Mapping[str, Any]) -> dict[str, Inputs]:
        return {
            "the first minibatch (every ratio is 1)": policy_loss_inputs(rng, response_mask(rng), 0.2, moved=0.0),
            "one-token responses": policy_loss_inputs(rng, response_mask(rng, lengths=[1, 1, 3], width=3), 0.15),
            "rows without padding": policy_loss_inputs(rng, response_mask(rng, lengths=[5, 5], width=5), 0.25),
        }

    def shapes(self, inputs: Inputs) -> tuple[tuple[int, ...], ...]:
        return ((),)

    @mistake
    def wrong_side(logprobs, old_logprobs, advantages, mask, clip_range):  # noqa: ANN001, ANN201
        """you take the optimistic term: PPO keeps the smaller objective, min(rho A, clip(rho) A) (the larger loss),
        so that clipping can only take away the incentive to move, never add one."""
        return -_masked_mean(torch.maximum(*_objectives(logprobs, old_logprobs, advantages, clip_range)), mask)

    @mistake
    def no_clip(logprobs, old_logprobs, advantages, mask, clip_range):  # noqa: ANN001, ANN201
        """the second term clamps the ratio to [1 - epsilon, 1 + epsilon]: without it nothing stops a large step."""
        return -_masked_mean(torch.exp(logprobs - old_logprobs) * advantages, mask)

    @mistake
    def fixed_clip_range(logprobs, old_logprobs, advantages, mask, clip_range):  # noqa: ANN001, ANN201
        """the clip range is an argument: clamp to [1 - clip_range, 1 + clip_range], not to a fixed [0.8, 1.2]."""
        return -_masked_mean(torch.minimum(*_objectives(logprobs, old_logprobs, advantages, 0.2)), mask)

    @mistake
    def sign(logprobs, old_logprobs, advantages, mask, clip_range):  # noqa: ANN001, ANN201
        """the loss is minus the objective: descending it must raise the probability of tokens with A > 0."""
        return _masked_mean(torch.minimum(*_objectives(logprobs, old_logprobs, advantages, clip_range)), mask)

    @mistake
    def unmasked_mean(logprobs, old_logprobs, advantages, mask, clip_range):  # noqa: ANN001, ANN201
        """average over the response tokens only (a masked mean): padding is not part of any response."""
        return -torch.minimum(*_objectives(logprobs, old_logprobs, advantages, clip_range)).mean()

    @mistake
    def ratio_inverted(logprobs, old_logprobs, advantages, mask, clip_range):  # noqa: ANN001, ANN201
        """the ratio is pi_theta / pi_old = exp(logprobs - old_logprobs), the new policy over the old one."""
        return -_masked_mean(
            torch.minimum(*_objectives(logprobs, old_logprobs, advantages, clip_range, inverted=True)), mask
        )


def value_loss_inputs(rng: torch.Generator, mask: torch.Tensor, clip_range_value: float) -> Inputs:
    """Values now and at sampling (some moved beyond the clip), returns, the mask, epsilon_V."""
    batch, width = mask.shape
    old_values = torch.randn(batch, width, generator=rng)
    return {
        "values": old_values + torch.randn(batch, width, generator=rng) * 0.5,
        "old_values": old_values,
        "returns": torch.randn(batch, width, generator=rng),
        "mask": mask,
        "clip_range_value": clip_range_value,
    }


def _value_terms(values, old_values, returns, eps):  # noqa: ANN001, ANN202
    clipped = old_values + torch.clamp(values - old_values, -eps, eps)
    return (values - returns) ** 2, (clipped - returns) ** 2


class PpoValueLoss(Exercise):
    name, notebook, section = "ppo_value_loss", "3-RLHF", "3.6"
    asks_for = "the clipped value loss, a scalar tensor"
    outputs = ("loss",)
    rule = (
        "0.5 * masked mean over the response tokens of max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2), "
        "eps = clip_range_value."
    )
    differentiable = ("values",)
    tested_extras = True  # its statistic (the clip fraction)

    def random_inputs(self, rng: torch.Generator, settings: Mapping[str, Any]) -> Inputs:
        return value_loss_inputs(rng, response_mask(rng), _pick(rng, [0.1, 0.2, 0.5]))

    def edge_cases(self, rng: torch.Generator, settings: Mapping[str, Any]) -> dict[str, Inputs]:
        return {
            "one-token responses": value_loss_inputs(rng, response_mask(rng, lengths=[1, 1, 3], width=3), 0.2),
            "rows without padding": value_loss_inputs(rng, response_mask(rng, lengths=[5, 5], width=5), 0.3),
        }

    def shapes(self, inputs: Inputs) -> tuple[tuple[int, ...], ...]:
        return ((),)

    @mistake
    def no_clip(values, old_values, returns, mask, clip_range_value):  # noqa: ANN001, ANN201
        """that is the plain squared error: PPO's value loss also takes the error of the value clipped to V_old +- eps,
        and keeps the larger of the two. (A value clipped around the return instead never has the larger error, so
        it gives this too.)"""
        return 0.5 * _masked_mean((values - returns) ** 2, mask)

    @mistake
    def smaller_error(values, old_values, returns, mask, clip_range_value):  # noqa: ANN001, ANN201
        """keep the larger of the two squared errors (max), as the policy loss keeps the pessimistic term."""
        return 0.5 * _masked_mean(torch.minimum(*_value_terms(values, old_values, returns, clip_range_value)), mask)

    @mistake
    def no_half(values, old_values, returns, mask, clip_range_value):  # noqa: ANN001, ANN201
        """the loss has a factor 0.5 in front (so its gradient is the error itself)."""
        return _masked_mean(torch.maximum(*_value_terms(values, old_values, returns, clip_range_value)), mask)

    @mistake
    def unmasked_mean(values, old_values, returns, mask, clip_range_value):  # noqa: ANN001, ANN201
        """average over the response tokens only (a masked mean): padding is not part of any response."""
        return 0.5 * torch.maximum(*_value_terms(values, old_values, returns, clip_range_value)).mean()


def k3_inputs(rng: torch.Generator, mask: torch.Tensor, moved: float) -> Inputs:
    batch, width = mask.shape
    logprobs = -torch.rand(batch, width, generator=rng) * 3
    return {
        "logprobs": logprobs,
        "old_logprobs": logprobs + torch.randn(batch, width, generator=rng) * moved,
        "mask": mask,
    }


class ApproxKl(Exercise):
    name, notebook, section = "approx_kl", "3-RLHF", "3.6"
    asks_for = "the k3 estimate of KL(pi_old || pi_theta), a masked mean over the response tokens, a scalar tensor"
    outputs = ("approx_kl",)
    rule = (
        "with log rho = logprobs - old_logprobs: the masked mean of (rho - 1) - log rho, which is >= 0 on every token."
    )

    def random_inputs(self, rng: torch.Generator, settings: Mapping[str, Any]) -> Inputs:
        return k3_inputs(rng, response_mask(rng), _pick(rng, [0.05, 0.3, 1.0]))

    def edge_cases(self, rng: torch.Generator, settings: Mapping[str, Any]) -> dict[str, Inputs]:
        return {
            "an update that has not moved the policy (every ratio is 1)": k3_inputs(rng, response_mask(rng), 0.0),
            "one-token responses": k3_inputs(rng, response_mask(rng, lengths=[1, 1, 3], width=3), 0.5),
        }

    def shapes(self, inputs: Inputs) -> tuple[tuple[int, ...], ...]:
        return ((),)

    @mistake
    def k1(logprobs, old_logprobs, mask):  # noqa: ANN001, ANN201
        """that is k1, the mean log-ratio log(pi_old / pi): unbiased, but negative on many tokens and noisy. k3 adds
        rho - 1, whose expectation is 0, and becomes >= 0 on every token."""
        return _masked_mean(old_logprobs - logprobs, mask)

    @mistake
    def k2(logprobs, old_logprobs, mask):  # noqa: ANN001, ANN201
        """that is k2, half the squared log-ratio: >= 0 but biased. k3 is (rho - 1) - log rho."""
        return _masked_mean(0.5 * (logprobs - old_logprobs) ** 2, mask)

    @mistake
    def ratio_inverted(logprobs, old_logprobs, mask):  # noqa: ANN001, ANN201
        """rho is pi_theta / pi_old = exp(logprobs - old_logprobs): with the tokens drawn from pi_old, this ratio makes
        (rho - 1) - log rho an estimate of KL(pi_old || pi_theta). Yours is turned around."""
        log_ratio = old_logprobs - logprobs
        return _masked_mean(torch.exp(log_ratio) - 1 - log_ratio, mask)

    @mistake
    def unmasked_mean(logprobs, old_logprobs, mask):  # noqa: ANN001, ANN201
        """average over the response tokens only (a masked mean): padding is not part of any response."""
        log_ratio = logprobs - old_logprobs
        return (torch.exp(log_ratio) - 1 - log_ratio).mean()


# -----------------------------------------------------------------------------
# Section 8: GRPO's advantages


def group_inputs(rng: torch.Generator, group_size: int, gamma: float = 1.0, groups: int = 2,
                 scores: torch.Tensor | None = None, lengths: Sequence[int] | None = None) -> Inputs:  # fmt: skip
    """Groups of k consecutive responses: whole-number scores (ties possible), KL-shaped rewards with each score on
    its last real token, the mask, k, gamma."""
    batch = groups * group_size
    mask = response_mask(rng, batch=batch, lengths=lengths)
    if scores is None:
        scores = torch.randint(-3, 4, (batch,), generator=rng).float()
    rewards = -0.1 * torch.randn(mask.shape, generator=rng) * mask
    rewards = plus_score_at_end(rewards, scores, mask)
    return {"scores": scores, "rewards": rewards, "mask": mask, "group_size": group_size, "gamma": gamma}


def group_relative(scores: torch.Tensor, group_size: int, unbiased: bool = True, whole_batch: bool = False,
                   eps: float = 1e-4) -> torch.Tensor:  # fmt: skip
    """(s - mean) / (std + eps) over each group or (a mistake) over the whole batch, (B,)."""
    groups = scores.view(1, -1) if whole_batch else scores.view(-1, group_size)
    return ((groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True, unbiased=unbiased) + eps)).flatten()


def returns_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = r_t + gamma G_{t+1} over each row's tokens, backwards, (B, T)."""
    returns, following = torch.zeros_like(rewards), torch.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        following = (rewards[:, t] + gamma * following) * mask[:, t] + following * (1 - mask[:, t])
        returns[:, t] = following * mask[:, t]
    return returns


def score_swapped(rewards, mask, scores, relative, gamma):  # noqa: ANN001, ANN201
    """The rewards with each row's last-token score replaced by `relative`, then the returns to go."""
    return returns_to_go(plus_score_at_end(rewards, relative - scores, mask), mask, gamma)


class GrpoAdvantages(Exercise):
    name, notebook, section = "grpo_advantages", "3-RLHF", "8"
    asks_for = "the advantages, (B, T) and 0 outside the mask"
    outputs = ("advantages",)
    rule = (
        "the rewards with the score on each last real token replaced by (s - group mean) / (group std + 1e-4), then "
        "A_t = sum over t' >= t of gamma^(t' - t) r_t', per row, 0 on padding; a group is group_size consecutive rows, "
        "its std the sample std (k - 1)."
    )

    def random_inputs(self, rng: torch.Generator, settings: Mapping[str, Any]) -> Inputs:
        return group_inputs(rng, int(_pick(rng, [2, 3, 4])), _pick(rng, [1.0, 1.0, 0.9]))

    def edge_cases(self, rng: torch.Generator, settings: Mapping[str, Any]) -> dict[str, Inputs]:
        return {
            "a tied group (all four scores 1)": group_inputs(rng, 4, scores=torch.tensor([1.0] * 4 + [0, 1, 2, 5])),
            "a nearly tied group (scores 1 apart by 0.001)": group_inputs(
                rng, 2, scores=torch.tensor([1.0, 1.001, -2.0, 3.0])
            ),
            "one-token responses": group_inputs(rng, 2, lengths=[1, 1, 1, 1]),
            "rows without padding": group_inputs(rng, 3, lengths=[6] * 6),
        }

    def describe(self, inputs: Inputs, output: str, index: tuple[int, ...]) -> str:
        k = inputs["group_size"]
        group = index[0] // k
        scores = inputs["scores"][group * k : (group + 1) * k].tolist()
        return f"{describe_token(inputs['mask'], index)}, in group {group} (scores {scores})"

    def shapes(self, inputs: Inputs) -> tuple[tuple[int, ...], ...]:
        return (tuple(inputs["rewards"].shape),)

    @mistake
    def batch_not_group(scores, rewards, mask, group_size, gamma):  # noqa: ANN001, ANN201
        """normalise each score within its own group (the k responses to one prompt, consecutive rows), not over the
        whole batch: the baseline is the other answers to the same prompt."""
        return score_swapped(rewards, mask, scores, group_relative(scores, group_size, whole_batch=True), gamma)

    @mistake
    def biased_std(scores, rewards, mask, group_size, gamma):  # noqa: ANN001, ANN201
        """use the sample std of the k scores (divide by k - 1, torch.std's default), not the population one."""
        return score_swapped(rewards, mask, scores, group_relative(scores, group_size, unbiased=False), gamma)

    @mistake
    def no_eps(scores, rewards, mask, group_size, gamma):  # noqa: ANN001, ANN201
        """add 1e-4 to the std: a group whose scores tie has std 0, and 0 / 0 is NaN."""
        return score_swapped(rewards, mask, scores, group_relative(scores, group_size, eps=0.0), gamma)

    @mistake
    def score_kept(scores, rewards, mask, group_size, gamma):  # noqa: ANN001, ANN201
        """the relative score replaces s on the last token: subtract s from the rewards there first."""
        return score_swapped(rewards, mask, scores, scores + group_relative(scores, group_size), gamma)

    @mistake
    def no_kl(scores, rewards, mask, group_size, gamma):  # noqa: ANN001, ANN201
        """keep the KL penalties: each token's advantage is the return from that token on, the rewards -beta KL
        included, with the relative score on the last token."""
        return group_relative(scores, group_size)[:, None] * mask

    @mistake
    def kl_not_summed(scores, rewards, mask, group_size, gamma):  # noqa: ANN001, ANN201
        """each token gets the return from itself to the end of its response (the KL rewards of the later tokens
        too, and the relative score), not only its own KL reward beside the relative score."""
        kl_rewards = plus_score_at_end(rewards, -scores, mask)  # the rewards without the score
        return (group_relative(scores, group_size)[:, None] + kl_rewards) * mask


# -----------------------------------------------------------------------------
# Section 8: the DPO loss


def dpo_inputs(rng: torch.Generator, beta: float, gaps: Sequence[float] = (), pairs: int = 6) -> Inputs:
    """Sequence log-probs (B,) of chosen and rejected responses under the policy and the reference, and beta; `gaps`
    sets the first pairs' (log pi - log pi_ref)(chosen) - (log pi - log pi_ref)(rejected)."""
    ref_chosen, ref_rejected = -torch.rand(pairs, generator=rng) * 20 - 2, -torch.rand(pairs, generator=rng) * 20 - 2
    chosen = ref_chosen + torch.randn(pairs, generator=rng)
    rejected = ref_rejected + torch.randn(pairs, generator=rng)
    for k, gap in enumerate(gaps):
        chosen[k] = ref_chosen[k] + (rejected[k] - ref_rejected[k]) + gap
    return {"chosen_logps": chosen, "rejected_logps": rejected, "ref_chosen_logps": ref_chosen,
            "ref_rejected_logps": ref_rejected, "beta": beta}  # fmt: skip


def at_reference(inputs: Inputs) -> Inputs:
    """The same pairs before the first step: the policy's log-probs are the reference's."""
    return {**inputs, "chosen_logps": inputs["ref_chosen_logps"].clone(),
            "rejected_logps": inputs["ref_rejected_logps"].clone()}  # fmt: skip


class DpoLoss(Exercise):
    name, notebook, section = "dpo_loss", "3-RLHF", "8"
    asks_for = "the DPO loss, a mean over the pairs, a scalar tensor"
    outputs = ("loss",)
    rule = (
        "loss = mean over pairs of -log sigmoid(beta [(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log "
        "pi_ref(y_l))]), with each log pi the whole response's (summed) log-probability."
    )
    differentiable = ("chosen_logps", "rejected_logps")
    tested_extras = True  # its statistics (the implicit rewards' accuracy and margin)

    def random_inputs(self, rng: torch.Generator, settings: Mapping[str, Any]) -> Inputs:
        return dpo_inputs(rng, _pick(rng, [0.05, 0.1, 0.3, 1.0]))

    def edge_cases(self, rng: torch.Generator, settings: Mapping[str, Any]) -> dict[str, Inputs]:
        return {
            "the policy is still the reference (every implicit reward 0)": at_reference(dpo_inputs(rng, 0.1)),
            "a pair 1000 nats apart the wrong way, beta = 0.1": dpo_inputs(rng, 0.1, gaps=[-1000.0]),
        }

    def shapes(self, inputs: Inputs) -> tuple[tuple[int, ...], ...]:
        return ((),)

    @mistake
    def wrong_sign(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):  # noqa: ANN001, ANN201
        """the loss must fall as the chosen response gains on the rejected one: the margin is the chosen response's
        log-ratio minus the rejected one's, each log pi - log pi_ref (reversing both the order and the log-ratios
        gives this same mistake)."""
        margin = beta * ((rejected_logps - ref_rejected_logps) - (chosen_logps - ref_chosen_logps))
        return -torch.nn.functional.logsigmoid(margin).mean()

    @mistake
    def no_reference(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):  # noqa: ANN001, ANN201
        """the reference is missing: each implicit reward is beta log(pi / pi_ref), so subtract the reference's
        log-probability of each response. Without it the policy is not held near the reference."""
        return -torch.nn.functional.logsigmoid(beta * (chosen_logps - rejected_logps)).mean()

    @mistake
    def beta_outside(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):  # noqa: ANN001, ANN201
        """beta goes inside the sigmoid, on the margin: it sets how sharply the loss tells a small margin from a large
        one, not the loss's scale."""
        margin = (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)
        return -beta * torch.nn.functional.logsigmoid(margin).mean()

    @mistake
    def no_beta(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):  # noqa: ANN001, ANN201
        """beta is missing: the margin is beta times the difference of the two log-ratios."""
        margin = (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)
        return -torch.nn.functional.logsigmoid(margin).mean()

    @mistake
    def exp_overflows(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):  # noqa: ANN001, ANN201
        """your loss goes through exp, as log(sigmoid(h)) and log(1 + exp(-h)) both do, and exp overflows float32 for
        a margin far below 0 (one pair here is 1000 nats apart the wrong way): the loss becomes inf where the answer
        is finite. F.logsigmoid(h) computes the same value without overflowing."""
        margin = beta * ((chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps))
        return -torch.log(torch.sigmoid(margin)).mean()

    @mistake
    def summed(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):  # noqa: ANN001, ANN201
        """take the mean over the pairs, so that the loss (and the step size) does not grow with the batch."""
        margin = beta * ((chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps))
        return -torch.nn.functional.logsigmoid(margin).sum()
