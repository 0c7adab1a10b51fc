"""The notebooks' exercises and their checks: a learner's function is compared with the tested implementation on
random inputs, and a wrong answer that matches a classic mistake gets that mistake's hint.

Each exercise lists its classic mistakes as small functions: a learner's output that matches one of them (and not
the reference) is that mistake. The references come from rlhf_utils (`ru.check_exercise` passes them in), so this
module never imports the teaching core. A check never raises: an unfinished exercise (NotImplementedError) is
reported as such, and the notebook goes on with the reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

Inputs = dict[str, Any]


@dataclass(frozen=True)
class Mistake:
    """A classic wrong answer, written as code, and the hint it earns."""

    name: str
    fn: Callable[..., Any]
    hint: str


@dataclass(frozen=True)
class Exercise:
    """One exercise: where it is, what it asks for, how to draw inputs, and the mistakes it recognises."""

    name: str
    notebook: str
    asks_for: str  # what the learner's function must return
    make_inputs: Callable[[torch.Generator, Mapping[str, Any]], Inputs]
    outputs: Sequence[str]  # names of the compared outputs, in order (the first len(outputs) of a tuple)
    mistakes: Sequence[Mistake] = field(default_factory=tuple)
    generic_hint: str = ""


@dataclass(frozen=True)
class CheckResult:
    """What a check found: status is 'correct', 'not done', 'error' or 'wrong'; hint names the mistake if known."""

    exercise: str
    status: str
    message: str
    mistake: str | None = None

    @property
    def passed(self) -> bool:
        """Whether the learner's function matched the reference on every random input."""
        return self.status == "correct"

    def __repr__(self) -> str:
        return self.message


# -----------------------------------------------------------------------------
# Random inputs


def _lengths(generator: torch.Generator, batch: int, width: int, shortest: int = 1) -> list[int]:
    """Row lengths in [shortest, width], with at least one full row and one shorter row."""
    lengths = torch.randint(shortest, width + 1, (batch,), generator=generator).tolist()
    lengths[0], lengths[-1] = width, max(shortest, min(lengths[-1], width - 2))
    return lengths


def _right_mask(lengths: Sequence[int], width: int) -> torch.Tensor:
    """(B, T) mask with each row's first `length` positions 1."""
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()


def _token_batch(generator: torch.Generator, settings: Mapping[str, Any]) -> Inputs:
    """Right-padded token rows that end with EOS, where the pad id is the EOS id (as in GPT-2); row 0 is full."""
    pad_id = int(settings.get("pad_id", 50))  # the notebook passes its tokenizer's
    batch, width = 4, 7
    lengths = _lengths(generator, batch, width, shortest=2)
    ids = torch.randint(0, 50, (batch, width), generator=generator)
    ids = torch.where(ids == pad_id, ids + 1, ids)  # real words never use the pad id
    mask = _right_mask(lengths, width)
    for row, length in enumerate(lengths):
        ids[row, length - 1] = pad_id  # the appended EOS
    ids = ids.masked_fill(mask == 0, pad_id)  # (B, T)
    return {"input_ids": ids, "attention_mask": mask}


def _logits_and_labels(generator: torch.Generator, settings: Mapping[str, Any]) -> Inputs:
    """Random logits (B, T, V) and labels with -100 on each row's padding."""
    batch, width, vocab = 3, 6, 11
    mask = _right_mask(_lengths(generator, batch, width, shortest=2), width)
    labels = torch.randint(0, vocab, (batch, width), generator=generator).masked_fill(mask == 0, -100)
    return {"logits": torch.randn(batch, width, vocab, generator=generator), "labels": labels}


def _losses(generator: torch.Generator, settings: Mapping[str, Any]) -> Inputs:
    """A validation loss in nats per token."""
    return {"validation_loss": float(torch.empty(()).uniform_(0.5, 8.0, generator=generator))}


def _score_pairs(generator: torch.Generator, settings: Mapping[str, Any]) -> Inputs:
    """Scores of chosen and rejected responses; some pairs far apart, as a trained model produces."""
    chosen, rejected = torch.randn(8, generator=generator) * 2, torch.randn(8, generator=generator) * 2
    chosen[0], rejected[0] = -100.0, 100.0  # a badly wrong pair: log(sigmoid(-200)) underflows to log(0)
    return {"chosen_scores": chosen, "rejected_scores": rejected}


def _padded_values(generator: torch.Generator, settings: Mapping[str, Any]) -> Inputs:
    """Scalars at every position (B, T) and a mask whose rows are right-padded or left-padded."""
    batch, width = 6, 7
    lengths = _lengths(generator, batch, width, shortest=2)
    mask = _right_mask(lengths, width)
    mask[batch // 2 :] = mask[batch // 2 :].flip(1)  # the second half left-padded, as PPO's prompts are
    return {"values": torch.randn(batch, width, generator=generator), "attention_mask": mask}


def _score_gaps(generator: torch.Generator, settings: Mapping[str, Any]) -> Inputs:
    """A gap between two responses' scores, and a KL coefficient."""
    gap = float(torch.empty(()).uniform_(0.1, 1.5, generator=generator))
    return {"score_gap": gap, "kl_coef": float(torch.empty(()).uniform_(0.1, 1.0, generator=generator))}


def _response_mask(generator: torch.Generator, width: int = 6, batch: int = 4) -> torch.Tensor:
    """(B, T) float mask of right-padded responses of random lengths."""
    return _right_mask(_lengths(generator, batch, width), width).float()


def _reward_inputs(generator: torch.Generator, settings: Mapping[str, Any]) -> Inputs:
    """Scores (B,), log-probs of policy and reference (B, T) (noise on the padding too), a mask, beta."""
    mask = _response_mask(generator)
    batch, width = mask.shape
    logprobs = -torch.rand(batch, width, generator=generator) * 3
    ref_logprobs = logprobs + torch.randn(batch, width, generator=generator) * 0.5
    kl_coef = float(torch.empty(()).uniform_(0.05, 0.3, generator=generator))
    scores = torch.randn(batch, generator=generator)
    return {"scores": scores, "logprobs": logprobs, "ref_logprobs": ref_logprobs, "mask": mask, "kl_coef": kl_coef}


def _gae_inputs(generator: torch.Generator, settings: Mapping[str, Any]) -> Inputs:
    """Values and rewards (B, T) (non-zero on the padding too), a mask, gamma and lambda."""
    mask = _response_mask(generator)
    batch, width = mask.shape
    gamma = float(torch.tensor([1.0, 0.9])[torch.randint(2, (), generator=generator)])
    lam = float(torch.empty(()).uniform_(0.7, 0.97, generator=generator))
    return {
        "values": torch.randn(batch, width, generator=generator),
        "rewards": torch.randn(batch, width, generator=generator) * mask,
        "mask": mask,
        "gamma": gamma,
        "lam": lam,
    }


def _policy_loss_inputs(generator: torch.Generator, settings: Mapping[str, Any]) -> Inputs:
    """Log-probs now and at sampling (ratios well outside 1 +- epsilon), advantages of both signs, a mask."""
    mask = _response_mask(generator)
    batch, width = mask.shape
    logprobs = -torch.rand(batch, width, generator=generator) * 3
    return {
        "logprobs": logprobs,
        "old_logprobs": logprobs + torch.randn(batch, width, generator=generator) * 0.5,
        "advantages": torch.randn(batch, width, generator=generator),
        "mask": mask,
        "clip_range": 0.2,
    }


def _group_inputs(generator: torch.Generator, settings: Mapping[str, Any]) -> Inputs:
    """Two groups of k = 4 responses: scores (B,), KL-shaped rewards with the score on each last token (B, T), a
    mask, k. Scores are whole numbers, so a group's responses can tie."""
    group_size, mask = 4, _response_mask(generator, batch=8)  # consecutive rows 0-3 and 4-7
    scores = torch.randint(-3, 4, (8,), generator=generator).float()
    rewards = -0.1 * torch.randn(mask.shape, generator=generator) * mask
    return {
        "scores": scores,
        "rewards": _plus_score_at_end(rewards, scores, mask),
        "mask": mask,
        "group_size": group_size,
    }


def _group_relative(scores: torch.Tensor, group_size: int, unbiased: bool = True, whole_batch: bool = False):  # noqa: ANN202
    """(s - mean) / (std + 1e-4), over each group or (a mistake) over the whole batch."""
    groups = scores.view(1 if whole_batch else -1, -1 if whole_batch else group_size)
    return ((groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True, unbiased=unbiased) + 1e-4)).flatten()


def _score_swapped(rewards, mask, scores, relative):  # noqa: ANN001, ANN202
    """rewards with each row's last-token score replaced by `relative`, then the returns to go (gamma = 1)."""
    swapped = _plus_score_at_end(rewards, relative - scores, mask)
    return torch.flip(torch.cumsum(torch.flip(swapped * mask, [1]), 1), [1]) * mask


# -----------------------------------------------------------------------------
# The classic mistakes, written as code


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum()


def _per_token_ce(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shifted, targets = logits[:, :-1], labels[:, 1:]
    ce = F.cross_entropy(
        shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="none"
    )
    return ce.view(targets.shape), (targets != -100).float()


def _plus_score_at_end(rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """rewards (B, T) with each row's score added at its last real token."""
    last = (mask * torch.arange(mask.shape[1])).argmax(1, keepdim=True)  # (B, 1)
    return rewards.scatter_add(1, last, scores[:, None])


def _whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = _masked_mean(x, mask)
    var = _masked_mean((x - mean) ** 2, mask)
    return (x - mean) / torch.sqrt(var + 1e-8) * mask


def _gae_loop(values, rewards, mask, gamma, lam, *, backwards=True, stop_at_end=True):  # noqa: ANN001, ANN202
    advantages = torch.zeros_like(values)
    batch, width = values.shape
    for b in range(batch):
        real = [t for t in range(width) if mask[b, t] > 0]
        order = reversed(real) if backwards else iter(real)
        next_value, next_advantage = 0.0, 0.0
        for t in order:
            if not stop_at_end and t + 1 < width:
                next_value = values[b, t + 1]
            delta = rewards[b, t] + gamma * next_value - values[b, t]
            advantages[b, t] = delta + gamma * lam * next_advantage
            next_value, next_advantage = values[b, t], advantages[b, t]
    return advantages, (advantages + values) * mask


def _policy_objectives(logprobs, old_logprobs, advantages, clip_range, *, clip=True, inverted=False):  # noqa: ANN001, ANN202
    ratio = torch.exp(old_logprobs - logprobs) if inverted else torch.exp(logprobs - old_logprobs)
    clipped = torch.clamp(ratio, 1 - clip_range, 1 + clip_range) if clip else ratio
    return ratio * advantages, clipped * advantages


EXERCISES: dict[str, Exercise] = {
    exercise.name: exercise
    for exercise in [
        Exercise(
            "lm_labels",
            "1-SFT",
            "labels (B, T): the input ids, with -100 where the loss must not look",
            _token_batch,
            ["labels"],
            [
                Mistake(
                    "mask_by_token_id",
                    lambda input_ids, attention_mask: input_ids.masked_fill(input_ids == input_ids[0, -1], -100),
                    "your labels drop the EOS. GPT-2's pad token is its EOS token, so finding padding by token id also "
                    "removes the EOS the model must learn to predict: find padding with the attention mask instead.",
                ),
                Mistake(
                    "no_mask",
                    lambda input_ids, attention_mask: input_ids.clone(),
                    "the padding is still in your labels: set it to -100, the index the loss ignores.",
                ),
                Mistake(
                    "pad_as_zero",
                    lambda input_ids, attention_mask: input_ids.masked_fill(attention_mask == 0, 0),
                    "0 is a real token id, so the loss would train on it: the ignored label is -100.",
                ),
                Mistake(
                    "shifted",
                    lambda input_ids, attention_mask: torch.cat(
                        [input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100), input_ids[:, :1] * 0 - 100], 1
                    ),
                    "do not shift the labels: they line up with input_ids, and the loss pairs the logits at t with "
                    "the label at t + 1 itself.",
                ),
            ],
            "labels[b, t] is input_ids[b, t] where attention_mask[b, t] is 1, and -100 where it is 0.",
        ),
        Exercise(
            "causal_lm_loss",
            "1-SFT",
            "the mean next-token cross-entropy, a scalar",
            _logits_and_labels,
            ["loss"],
            [
                Mistake(
                    "no_shift",
                    lambda logits, labels: F.cross_entropy(
                        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100
                    ),
                    "the logits at position t predict the token at t + 1: drop the last position's logits and the "
                    "first label before the cross-entropy.",
                ),
                Mistake(
                    "counts_ignored",
                    lambda logits, labels: (lambda ce, m: (ce * m).sum() / m.numel())(*_per_token_ce(logits, labels)),
                    "you divide by every position, padding included: divide by the number of counted labels.",
                ),
                Mistake(
                    "per_sentence_mean",
                    lambda logits, labels: (lambda ce, m: ((ce * m).sum(1) / m.sum(1)).mean())(
                        *_per_token_ce(logits, labels)
                    ),
                    "you average each sentence, then the sentences: every token must weigh the same, so a long "
                    "sentence counts more than a short one. Sum over all counted tokens, divide by their number.",
                ),
            ],
            "shift (logits[:, :-1] against labels[:, 1:]), ignore -100, average over the counted tokens.",
        ),
        Exercise(
            "sft_probability",
            "1-SFT",
            "the geometric-mean probability of the next token, from a loss in nats per token",
            _losses,
            ["probability"],
            [
                Mistake(
                    "perplexity",
                    lambda validation_loss: math.exp(validation_loss),
                    "that is the perplexity, e^L: one over the probability asked for.",
                ),
                Mistake(
                    "base_10",
                    lambda validation_loss: 10 ** (-validation_loss),
                    "the loss is in nats (natural logarithms): use e, not 10.",
                ),
                Mistake(
                    "reciprocal",
                    lambda validation_loss: 1 / validation_loss,
                    "the loss is a mean of -log p: undo the logarithm.",
                ),
            ],
            "L = -(1/N) sum log p_t, so the mean of log p_t is -L.",
        ),
        Exercise(
            "pairwise_reward_loss",
            "2-RM Training",
            "the mean Bradley-Terry loss over the pairs, a scalar",
            _score_pairs,
            ["loss"],
            [
                Mistake(
                    "wrong_sign",
                    lambda chosen_scores, rejected_scores: -F.logsigmoid(rejected_scores - chosen_scores).mean(),
                    "the sign is reversed: the loss must fall as the chosen score rises above the rejected one.",
                ),
                Mistake(
                    "log_of_sigmoid",
                    lambda chosen_scores, rejected_scores: (
                        -torch.log(torch.sigmoid(chosen_scores - rejected_scores)).mean()
                    ),
                    "log(sigmoid(x)) underflows to log(0) = -inf for a large negative gap (one pair here is 200 "
                    "apart): use F.logsigmoid, which computes the same value stably.",
                ),
                Mistake(
                    "sum",
                    lambda chosen_scores, rejected_scores: -F.logsigmoid(chosen_scores - rejected_scores).sum(),
                    "take the mean over the pairs, so that the loss (and the step size) does not grow with the batch.",
                ),
                Mistake(
                    "bce_each",
                    lambda chosen_scores, rejected_scores: (
                        F.binary_cross_entropy_with_logits(chosen_scores, torch.ones_like(chosen_scores))
                        + F.binary_cross_entropy_with_logits(rejected_scores, torch.zeros_like(rejected_scores))
                    ),
                    "that is BCE on each response alone: the pairwise loss sees only the gap s_chosen - s_rejected.",
                ),
            ],
            "loss = mean over pairs of -log sigmoid(s_chosen - s_rejected).",
        ),
        Exercise(
            "score_at_last_token",
            "2-RM Training",
            "scores (B,): each row's scalar at its last real token, for left- and right-padded rows",
            _padded_values,
            ["scores"],
            [
                Mistake(
                    "last_column",
                    lambda values, attention_mask: values[:, -1],
                    "the last column is padding in a right-padded row: find each row's last position where the mask is 1.",
                ),
                Mistake(
                    "length_minus_one",
                    lambda values, attention_mask: values.gather(1, (attention_mask.sum(1) - 1)[:, None]).squeeze(1),
                    "mask.sum() - 1 is the last real token only when the padding is on the right; PPO's prompts are "
                    "left-padded (half of these rows are): find the last position where the mask is 1.",
                ),
                Mistake(
                    "first_token",
                    lambda values, attention_mask: values[:, 0],
                    "a causal model's first position has seen one token: read the last real one, which has seen the "
                    "whole sentence.",
                ),
            ],
            "for each row, the index of the last 1 in attention_mask, and the value there.",
        ),
        Exercise(
            "probability_ratio",
            "2-RM Training",
            "pi*(y1 | x) / pi*(y2 | x), for two responses the reference finds equally likely",
            _score_gaps,
            ["ratio"],
            [
                Mistake(
                    "no_beta",
                    lambda score_gap, kl_coef: math.exp(score_gap),
                    "beta is missing: pi* is proportional to pi_ref exp(s / beta), so the gap counts in units of beta.",
                ),
                Mistake(
                    "no_exp",
                    lambda score_gap, kl_coef: score_gap / kl_coef,
                    "the optimum is exponential in the score: exp(gap / beta).",
                ),
                Mistake(
                    "times_beta",
                    lambda score_gap, kl_coef: math.exp(score_gap * kl_coef),
                    "divide by beta: a smaller beta (a weaker KL leash) must make the ratio larger, not smaller.",
                ),
                Mistake(
                    "inverted",
                    lambda score_gap, kl_coef: math.exp(-score_gap / kl_coef),
                    "that is pi*(y2) / pi*(y1): the response with the higher score is the more likely one.",
                ),
            ],
            "pi*(y | x) = pi_ref(y | x) exp(s(x, y) / beta) / Z(x): Z and pi_ref cancel in the ratio.",
        ),
        Exercise(
            "compute_rewards",
            "3-RLHF",
            "per-token rewards (B, T) (a tuple may follow with more; only the first is compared)",
            _reward_inputs,
            ["rewards"],
            [
                Mistake(
                    "score_on_last_column",
                    lambda scores, logprobs, ref_logprobs, mask, kl_coef: (
                        (-kl_coef * (logprobs - ref_logprobs) * mask) + F.pad(scores[:, None], (mask.shape[1] - 1, 0))
                    ),
                    "the score goes on each row's last *real* token: responses end at different lengths, and the last "
                    "column is padding for the short ones.",
                ),
                Mistake(
                    "kl_sign",
                    lambda scores, logprobs, ref_logprobs, mask, kl_coef: _plus_score_at_end(
                        kl_coef * (logprobs - ref_logprobs) * mask, scores, mask
                    ),
                    "the KL is a penalty: r_t = -beta (log pi - log pi_ref), minus, so drifting from the reference costs.",
                ),
                Mistake(
                    "kl_unmasked",
                    lambda scores, logprobs, ref_logprobs, mask, kl_coef: _plus_score_at_end(
                        -kl_coef * (logprobs - ref_logprobs), scores, mask
                    ),
                    "padding tokens are not part of the response: multiply the KL term by the mask.",
                ),
                Mistake(
                    "score_on_every_token",
                    lambda scores, logprobs, ref_logprobs, mask, kl_coef: (
                        (-kl_coef * (logprobs - ref_logprobs) + scores[:, None]) * mask
                    ),
                    "the score arrives once, with the last real token; the other tokens get only the KL term.",
                ),
            ],
            "r_t = -beta (log pi_t - log pi_ref_t) on each response token, plus s on the row's last real token; 0 "
            "on padding.",
        ),
        Exercise(
            "compute_gae",
            "3-RLHF",
            "(advantages, returns), both (B, T) and 0 outside the mask",
            _gae_inputs,
            ["advantages", "returns"],
            [
                Mistake(
                    "whiten_before_returns",
                    lambda values, rewards, mask, gamma, lam: (
                        lambda a, _: (_whiten(a, mask), (_whiten(a, mask) + values) * mask)
                    )(*_gae_loop(values, rewards, mask, gamma, lam)),
                    "compute returns = A + V from the raw advantages, and return those advantages: whitening is for "
                    "the policy loss only, and comes after (the value head must learn the returns in reward units).",
                ),
                Mistake(
                    "forwards",
                    lambda values, rewards, mask, gamma, lam: _gae_loop(
                        values, rewards, mask, gamma, lam, backwards=False
                    ),
                    "GAE runs backwards, from each row's last token: A_t needs A_{t+1}.",
                ),
                Mistake(
                    "bootstrap_past_end",
                    lambda values, rewards, mask, gamma, lam: _gae_loop(
                        values, rewards, mask, gamma, lam, stop_at_end=False
                    ),
                    "past a row's last real token the episode is over: take V = 0 and A = 0 there, not the value "
                    "the head wrote on the padding.",
                ),
                Mistake(
                    "no_lambda",
                    lambda values, rewards, mask, gamma, lam: _gae_loop(values, rewards, mask, gamma, 1.0),
                    "each step back multiplies A_{t+1} by gamma * lambda, not by gamma alone.",
                ),
            ],
            "backwards over the real tokens: delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lambda "
            "A_{t+1}, with V = A = 0 after the last one; returns = A + V.",
        ),
        Exercise(
            "ppo_policy_loss",
            "3-RLHF",
            "the clipped policy loss, a scalar (a tuple may follow with more; only the first is compared)",
            _policy_loss_inputs,
            ["loss"],
            [
                Mistake(
                    "wrong_side",
                    lambda logprobs, old_logprobs, advantages, mask, clip_range: (
                        -_masked_mean(
                            torch.maximum(*_policy_objectives(logprobs, old_logprobs, advantages, clip_range)), mask
                        )
                    ),
                    "you take the optimistic term: PPO keeps the smaller objective, min(ratio A, clip(ratio) A) (the "
                    "larger loss), so that clipping can only take away the incentive to move, never add one.",
                ),
                Mistake(
                    "no_clip",
                    lambda logprobs, old_logprobs, advantages, mask, clip_range: (
                        -_masked_mean(torch.exp(logprobs - old_logprobs) * advantages, mask)
                    ),
                    "the second term clamps the ratio to [1 - epsilon, 1 + epsilon]: without it nothing stops a large step.",
                ),
                Mistake(
                    "sign",
                    lambda logprobs, old_logprobs, advantages, mask, clip_range: _masked_mean(
                        torch.minimum(*_policy_objectives(logprobs, old_logprobs, advantages, clip_range)), mask
                    ),
                    "the loss is minus the objective: descending it must raise the probability of tokens with A > 0.",
                ),
                Mistake(
                    "unmasked_mean",
                    lambda logprobs, old_logprobs, advantages, mask, clip_range: (
                        -torch.minimum(*_policy_objectives(logprobs, old_logprobs, advantages, clip_range)).mean()
                    ),
                    "average over the response tokens only (a masked mean): padding is not part of any response.",
                ),
                Mistake(
                    "ratio_inverted",
                    lambda logprobs, old_logprobs, advantages, mask, clip_range: (
                        -_masked_mean(
                            torch.minimum(
                                *_policy_objectives(logprobs, old_logprobs, advantages, clip_range, inverted=True)
                            ),
                            mask,
                        )
                    ),
                    "the ratio is pi_theta / pi_old = exp(logprobs - old_logprobs), the new policy over the old one.",
                ),
            ],
            "loss = -masked mean of min(ratio A, clip(ratio, 1 - eps, 1 + eps) A), ratio = exp(logprobs - "
            "old_logprobs).",
        ),
        Exercise(
            "grpo_advantages",
            "3-RLHF",
            "the advantages, (B, T) and 0 outside the mask",
            _group_inputs,
            ["advantages"],
            [
                Mistake(
                    "batch_not_group",
                    lambda scores, rewards, mask, group_size: _score_swapped(
                        rewards, mask, scores, _group_relative(scores, group_size, whole_batch=True)
                    ),
                    "normalise each score within its own group (the k responses to one prompt, consecutive rows), not "
                    "over the whole batch: the baseline is the other answers to the same prompt.",
                ),
                Mistake(
                    "biased_std",
                    lambda scores, rewards, mask, group_size: _score_swapped(
                        rewards, mask, scores, _group_relative(scores, group_size, unbiased=False)
                    ),
                    "use the sample std of the k scores (divide by k - 1, torch.std's default), not the population one.",
                ),
                Mistake(
                    "score_kept",
                    lambda scores, rewards, mask, group_size: _score_swapped(
                        rewards, mask, scores, scores + _group_relative(scores, group_size)
                    ),
                    "the relative score replaces s on the last token: subtract s from the rewards there first.",
                ),
                Mistake(
                    "no_kl",
                    lambda scores, rewards, mask, group_size: _group_relative(scores, group_size)[:, None] * mask,
                    "keep the KL penalties: each token's advantage is the relative score plus the sum of the rewards "
                    "-beta KL from that token on.",
                ),
            ],
            "A_t = (s - group mean) / (group std + 1e-4) + the sum over t' >= t of the KL rewards (the rewards "
            "without the score), per row, 0 on padding.",
        ),
    ]
}

TRIALS = 4  # random inputs per check


def _as_outputs(value: Any, count: int) -> list[Any]:
    """The first `count` outputs of a function's return value, as a list."""
    if isinstance(value, (tuple, list)):
        return list(value[:count])
    return [value]


def _same(a: Any, b: Any) -> bool:
    """Whether two outputs agree (tensors or numbers), to float32 tolerance; inf matches only inf."""
    try:
        a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return False
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5, equal_nan=False))


def _difference(a: Any, b: Any) -> str:
    """Where and by how much a learner's output differs from the reference's, in words."""
    try:
        a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return f"it is a {type(a).__name__}, where a tensor or number of shape {tuple(torch.as_tensor(b).shape)} is expected"
    if a.shape != b.shape:
        return f"its shape is {tuple(a.shape)}, the reference's {tuple(b.shape)}"
    gap = (a - b).abs().nan_to_num(nan=math.inf)
    where = tuple(int(i) for i in torch.nonzero(gap == gap.max())[0]) if gap.dim() else ()
    return f"it differs by up to {float(gap.max()):.4g}" + (f" (first at index {where})" if where else "")


def check(name: str, fn: Callable[..., Any], reference: Callable[..., Any], **settings: Any) -> CheckResult:
    """Compare `fn` with `reference` on TRIALS random inputs of exercise `name`; never raises."""
    exercise = EXERCISES[name]
    generator = torch.Generator().manual_seed(sum(map(ord, name)))
    fallback = f"The notebook goes on with the tested version. `ru.show_solution({name!r})` shows one answer."
    count = len(exercise.outputs)
    for trial in range(TRIALS):
        inputs = exercise.make_inputs(generator, settings)
        try:
            got = _as_outputs(fn(**_copies(inputs)), count)
        except NotImplementedError:
            return CheckResult(name, "not done", f"Exercise {name!r} is not done yet. {fallback}")
        except Exception as error:  # noqa: BLE001  (a learner's code may raise anything: report it, go on)
            return CheckResult(name, "error", f"Your function raised {type(error).__name__}: {error}. {fallback}")
        expected = _as_outputs(reference(**_copies(inputs)), count)
        if len(got) < count:
            return CheckResult(
                name, "wrong", f"Not yet: return {exercise.asks_for}; yours returned {len(got)} value(s). {fallback}"
            )
        if all(_same(g, e) for g, e in zip(got, expected)):
            continue
        for mistake in exercise.mistakes:
            mistaken = _as_outputs(mistake.fn(**_copies(inputs)), count)
            if all(_same(g, m) for g, m in zip(got, mistaken)):
                return CheckResult(name, "wrong", f"Not yet: {mistake.hint} {fallback}", mistake.name)
        wrong = next(i for i, (g, e) in enumerate(zip(got, expected)) if not _same(g, e))
        return CheckResult(
            name,
            "wrong",
            f"Not yet: on random input {trial + 1}, your {exercise.outputs[wrong]}: {_difference(got[wrong], expected[wrong])}. "
            f"What is asked: {exercise.generic_hint} {fallback}",
        )
    return CheckResult(name, "correct", f"Correct: your {name} matches the tested one on {TRIALS} random inputs.")


def _copies(inputs: Inputs) -> Inputs:
    """Fresh copies of the inputs, so that no function sees another's in-place changes."""
    return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}


def solution(name: str) -> None:
    """Show the solution of exercise `name` (rlhf_support/solutions.py): read it after you have tried."""
    from rlhf_support import solutions
    from rlhf_support.reporting import show_source

    if name not in EXERCISES:
        raise KeyError(f"No exercise {name!r}; the exercises are {sorted(EXERCISES)}.")
    show_source(getattr(solutions, name))
