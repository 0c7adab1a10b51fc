"""The exercises of 2-RM Training.ipynb: reading the score (section 3.1), the pairwise loss (section 5.1), and what a
score gap buys under the KL-regularised optimum (section 5.2)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from .engine import Exercise, Inputs, mistake
from .sft import right_mask


def padded_values(rng: torch.Generator, lengths: list[int], width: int, left: list[bool]) -> Inputs:
    """A scalar at every position (B, T) and a mask whose rows are right-padded, or left-padded where `left` says."""
    mask = right_mask(lengths, width)
    for row, flip in enumerate(left):
        if flip:
            mask[row] = mask[row].flip(0)
    return {"values": torch.randn(len(lengths), width, generator=rng), "attention_mask": mask}


class ScoreAtLastToken(Exercise):
    name, notebook, section = "score_at_last_token", "2-RM Training", "3.1"
    asks_for = "scores (B,): each row's scalar at its last real token, for left- and right-padded rows"
    outputs = ("scores",)
    rule = "for each row, the index of the last 1 in attention_mask, and the value there."

    def random_inputs(self, rng: torch.Generator, settings: Mapping[str, Any]) -> Inputs:
        width = int(torch.randint(5, 9, (), generator=rng))
        lengths = torch.randint(2, width + 1, (6,), generator=rng).tolist()
        lengths[0], lengths[-1] = width, min(lengths[-1], width - 2)
        return padded_values(rng, lengths, width, [False] * 3 + [True] * 3)  # half left-padded, as PPO's prompts

    def edge_cases(self, rng: torch.Generator, settings: Mapping[str, Any]) -> dict[str, Inputs]:
        return {
            "rows without padding": padded_values(rng, [5, 5], 5, [False, True]),
            "rows of one real token": padded_values(rng, [1, 1, 4], 4, [False, True, False]),
            "left-padded rows only": padded_values(rng, [3, 5, 2], 5, [True, True, True]),
        }

    def describe(self, inputs: Inputs, output: str, index: tuple[int, ...]) -> str:
        mask = inputs["attention_mask"][index[0]]
        last = int((mask * torch.arange(len(mask))).argmax())
        side = "left-padded" if mask[0] == 0 and mask[-1] == 1 else "right-padded" if mask[-1] == 0 else "unpadded"
        return f"row {index[0]} is {side}, mask {mask.tolist()}: its last real token is at {last}"

    def shapes(self, inputs: Inputs) -> tuple[tuple[int, ...], ...]:
        return ((inputs["values"].shape[0],),)

    @mistake
    def last_column(values, attention_mask):  # noqa: ANN001, ANN201
        """the last column is padding in a right-padded row: find each row's last position where the mask is 1."""
        return values[:, -1]

    @mistake
    def length_minus_one(values, attention_mask):  # noqa: ANN001, ANN201
        """mask.sum() - 1 is the last real token only when the padding is on the right; PPO's prompts are
        left-padded (some of these rows are): find the last position where the mask is 1."""
        return values.gather(1, (attention_mask.sum(1) - 1)[:, None]).squeeze(1)

    @mistake
    def first_real_token(values, attention_mask):  # noqa: ANN001, ANN201
        """that is the first real token: a causal model's first position has seen one token. Read the last real
        one, which has seen the whole sentence."""
        return values.gather(1, attention_mask.argmax(1, keepdim=True)).squeeze(1)

    @mistake
    def first_column(values, attention_mask):  # noqa: ANN001, ANN201
        """a causal model's first position has seen one token: read the last real one, which has seen the whole
        sentence."""
        return values[:, 0]


def score_pairs(rng: torch.Generator, gaps: list[float] | None = None) -> Inputs:
    """Scores of chosen and rejected responses (8 pairs); `gaps` sets s_chosen - s_rejected of the first pairs."""
    chosen, rejected = torch.randn(8, generator=rng) * 2, torch.randn(8, generator=rng) * 2
    for k, gap in enumerate(gaps or []):
        chosen[k] = rejected[k] + gap
    return {"chosen_scores": chosen, "rejected_scores": rejected}


class PairwiseRewardLoss(Exercise):
    name, notebook, section = "pairwise_reward_loss", "2-RM Training", "5.1"
    asks_for = "the mean Bradley-Terry loss over the pairs, a scalar tensor"
    outputs = ("loss",)
    rule = "loss = mean over pairs of -log sigmoid(s_chosen - s_rejected)."
    differentiable = ("chosen_scores", "rejected_scores")

    def random_inputs(self, rng: torch.Generator, settings: Mapping[str, Any]) -> Inputs:
        return score_pairs(rng)

    def edge_cases(self, rng: torch.Generator, settings: Mapping[str, Any]) -> dict[str, Inputs]:
        return {
            "a pair 100 apart the wrong way (gap -100)": score_pairs(rng, [-100.0]),
            "pairs 30 apart the right way": score_pairs(rng, [30.0, 30.0]),
            "a tie (gap 0)": score_pairs(rng, [0.0]),
        }

    def shapes(self, inputs: Inputs) -> tuple[tuple[int, ...], ...]:
        return ((),)

    @mistake
    def wrong_sign(chosen_scores, rejected_scores):  # noqa: ANN001, ANN201
        """the sign is reversed: the loss must fall as the chosen score rises above the rejected one."""
        return -F.logsigmoid(rejected_scores - chosen_scores).mean()

    @mistake
    def exp_overflows(chosen_scores, rejected_scores):  # noqa: ANN001, ANN201
        """your loss goes through exp(-d), as log(sigmoid(d)) and log(1 + exp(-d)) both do, and exp overflows float32
        (largest 3.4e38) once d is below -88.7: a pair 100 apart the wrong way makes the loss inf, where the answer
        is finite. F.logsigmoid(d), or F.softplus(-d), computes the same value without overflowing."""
        return -torch.log(torch.sigmoid(chosen_scores - rejected_scores)).mean()

    @mistake
    def summed(chosen_scores, rejected_scores):  # noqa: ANN001, ANN201
        """take the mean over the pairs, so that the loss (and the step size) does not grow with the batch."""
        return -F.logsigmoid(chosen_scores - rejected_scores).sum()

    @mistake
    def bce_each(chosen_scores, rejected_scores):  # noqa: ANN001, ANN201
        """that is BCE on each response alone: the pairwise loss sees only the gap s_chosen - s_rejected."""
        return F.binary_cross_entropy_with_logits(
            chosen_scores, torch.ones_like(chosen_scores)
        ) + F.binary_cross_entropy_with_logits(rejected_scores, torch.zeros_like(rejected_scores))

    @mistake
    def no_log(chosen_scores, rejected_scores):  # noqa: ANN001, ANN201
        """the loss is the negative log-likelihood: -log sigmoid(d), not -sigmoid(d)."""
        return -torch.sigmoid(chosen_scores - rejected_scores).mean()


class ProbabilityRatio(Exercise):
    name, notebook, section = "probability_ratio", "2-RM Training", "5.2"
    asks_for = "pi*(y1 | x) / pi*(y2 | x), for two responses the reference finds equally likely, a number"
    outputs = ("ratio",)
    rule = "pi*(y | x) = pi_ref(y | x) exp(s(x, y) / beta) / Z(x): Z and pi_ref cancel in the ratio."
    trains = False

    def random_inputs(self, rng: torch.Generator, settings: Mapping[str, Any]) -> Inputs:
        gap = float(torch.empty(()).uniform_(0.1, 1.5, generator=rng))
        return {"score_gap": gap, "kl_coef": float(torch.empty(()).uniform_(0.1, 1.0, generator=rng))}

    def edge_cases(self, rng: torch.Generator, settings: Mapping[str, Any]) -> dict[str, Inputs]:
        return {"equal scores (gap 0)": {"score_gap": 0.0, "kl_coef": 0.5}}

    def shapes(self, inputs: Inputs) -> tuple[tuple[int, ...], ...]:
        return ((),)

    @mistake
    def no_beta(score_gap, kl_coef):  # noqa: ANN001, ANN201
        """beta is missing: pi* is proportional to pi_ref exp(s / beta), so the gap counts in units of beta."""
        return math.exp(score_gap)

    @mistake
    def no_exp(score_gap, kl_coef):  # noqa: ANN001, ANN201
        """the optimum is exponential in the score: exp(gap / beta)."""
        return score_gap / kl_coef

    @mistake
    def times_beta(score_gap, kl_coef):  # noqa: ANN001, ANN201
        """divide by beta: a smaller beta (a weaker KL leash) must make the ratio larger, not smaller."""
        return math.exp(score_gap * kl_coef)

    @mistake
    def inverted(score_gap, kl_coef):  # noqa: ANN001, ANN201
        """that is pi*(y2) / pi*(y1): the response with the higher score is the more likely one."""
        return math.exp(-score_gap / kl_coef)
