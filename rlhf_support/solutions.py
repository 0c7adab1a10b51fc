"""Solutions to the notebooks' exercises, written plainly (loops where a loop reads more clearly than the tested,
vectorised version in rlhf_utils). `exercises.solution(name)` shows one; the tests check that each passes its check.
Spoilers: read after you have tried."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# Notebook 1: SFT


def lm_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Labels for the causal-LM loss: the ids, with -100 wherever the attention mask is 0."""
    labels = input_ids.clone()  # (B, T)
    labels[attention_mask == 0] = -100  # padding, found by the mask: the EOS (same id as the pad) stays a target
    return labels  # not shifted: the loss pairs logits at t with labels at t + 1


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the labels that are not -100."""
    total, count = 0.0, 0
    batch, length, _ = logits.shape
    for b in range(batch):
        for t in range(length - 1):  # the logits at t predict the label at t + 1
            target = int(labels[b, t + 1])
            if target == -100:
                continue
            total = total - torch.log_softmax(logits[b, t].float(), dim=-1)[target]
            count += 1
    return total / count  # every counted token weighs the same


def sft_probability(validation_loss: float) -> float:
    """The geometric-mean probability of the next token, from a loss in nats per token."""
    return math.exp(-validation_loss)


# -----------------------------------------------------------------------------
# Notebook 2: the reward model


def pairwise_reward_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> torch.Tensor:
    """Mean of -log sigmoid(s_chosen - s_rejected)."""
    return -F.logsigmoid(chosen_scores - rejected_scores).mean()  # logsigmoid: no log(0) at large gaps


def score_at_last_token(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Each row's scalar at its last real token, (B,), for left- and right-padded rows alike."""
    scores = []
    for row_values, row_mask in zip(values, attention_mask):
        real = torch.nonzero(row_mask).flatten()  # positions of the real tokens
        scores.append(row_values[real[-1]])
    return torch.stack(scores)


def probability_ratio(score_gap: float, kl_coef: float) -> float:
    """pi*(y1 | x) / pi*(y2 | x) when pi_ref gives both the same probability and s(y1) - s(y2) = score_gap."""
    return math.exp(score_gap / kl_coef)


# -----------------------------------------------------------------------------
# Notebook 3: PPO


def compute_rewards(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards r_t = -beta (log pi - log pi_ref) on response tokens, plus the score on the last one; and the
    per-token KL, the log-ratio itself."""
    rewards, kl = torch.zeros_like(logprobs), torch.zeros_like(logprobs)  # (B, T) each
    for b in range(logprobs.shape[0]):
        real = torch.nonzero(mask[b]).flatten().tolist()
        for t in real:
            kl[b, t] = logprobs[b, t] - ref_logprobs[b, t]
            rewards[b, t] = -kl_coef * kl[b, t]
        if real:  # a row with no response token gets no score
            rewards[b, real[-1]] += scores[b]  # the score arrives with the last real token, not the last column
    return rewards, kl


def compute_gae(
    values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE advantages and returns (both (B, T), 0 outside the mask), one row at a time, backwards."""
    advantages = torch.zeros_like(values)
    for b in range(values.shape[0]):
        next_value, next_advantage = 0.0, 0.0  # past the last token the episode is over: V = A = 0
        for t in reversed(torch.nonzero(mask[b]).flatten().tolist()):
            delta = rewards[b, t] + gamma * next_value - values[b, t]
            advantages[b, t] = delta + gamma * lam * next_advantage
            next_value, next_advantage = values[b, t], advantages[b, t]
    returns = (advantages + values) * mask  # from the raw advantages: whitening comes later, for the policy only
    return advantages, returns


def ppo_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_range: float
) -> torch.Tensor:
    """The clipped surrogate loss, a mean over the response tokens."""
    ratio = torch.exp(logprobs - old_logprobs)  # (B, T)
    objective = torch.minimum(  # the pessimistic objective; the loss is its negative
        ratio * advantages, torch.clamp(ratio, 1 - clip_range, 1 + clip_range) * advantages
    )
    mask = mask.to(objective.dtype)
    return -(objective * mask).sum() / mask.sum()


def ppo_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip_range_value: float
) -> torch.Tensor:
    """The clipped value loss: half the masked mean of the larger of the two squared errors."""
    clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)  # V_old +- eps
    errors = torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)  # the pessimistic one, per token
    mask = mask.to(errors.dtype)
    return 0.5 * (errors * mask).sum() / mask.sum()


def approx_kl(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """k3 = (rho - 1) - log rho per token, rho = pi / pi_old, averaged over the response tokens."""
    log_ratio = logprobs - old_logprobs
    k3 = torch.exp(log_ratio) - 1 - log_ratio  # >= 0 on every token
    mask = mask.to(k3.dtype)
    return (k3 * mask).sum() / mask.sum()


def grpo_advantages(
    scores: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, group_size: int, gamma: float
) -> torch.Tensor:
    """GRPO's advantages (B, T): the group-normalised score plus the KL rewards to go, one row at a time."""
    advantages = torch.zeros_like(rewards)
    for start in range(0, len(scores), group_size):
        group = scores[start : start + group_size]
        mean, std = group.mean(), group.std()  # the sample std: divides by k - 1
        for b in range(start, start + group_size):
            relative = (scores[b] - mean) / (std + 1e-4)
            tokens = torch.nonzero(mask[b]).flatten().tolist()
            to_go = 0.0
            for t in reversed(tokens):  # the rewards, with the last token's score replaced by the relative one
                reward = rewards[b, t] + (relative - scores[b]) if t == tokens[-1] else rewards[b, t]
                to_go = reward + gamma * to_go
                advantages[b, t] = to_go
    return advantages


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """The DPO loss, pair by pair: -log sigmoid of beta times the gap between the two responses' log-ratios."""
    losses = []
    for k in range(len(chosen_logps)):
        chosen_ratio = chosen_logps[k] - ref_chosen_logps[k]  # log pi(y_w) / pi_ref(y_w): the implicit reward / beta
        rejected_ratio = rejected_logps[k] - ref_rejected_logps[k]
        losses.append(-F.logsigmoid(beta * (chosen_ratio - rejected_ratio)))  # logsigmoid: no overflow
    return torch.stack(losses).mean()
