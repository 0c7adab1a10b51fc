"""rlhf_utils.py: the teaching core of the "RLHF in Notebooks" series, every piece the notebooks teach, tested.

The three notebooks teach; this module holds the one implementation of each piece they teach,
so that the tests in `tests/` check exactly the code the notebooks run. It reads top to bottom
in the order a learner meets the pieces: each function sits where the notebooks first call it, a helper before its
first user (tests/test_core_order.py checks both).

    0. your pieces -> 1. SFT (notebook 1) -> 2. the reward model (notebook 2) -> 3. the rollout: the policy,
    generation, scores, log-probs -> 4. the PPO math -> 5. the loop and the evaluation -> 6. beyond PPO: critic-free
    estimators, best-of-n, DPO (notebook 3)

One PPO iteration of notebook 3's loop cell reads forward through sections 3 and 4 (generate, score, log-probs, the
KL-shaped reward, GAE, the clipped losses); its own helpers (prompts, minibatches) sit in section 5, where the loop
first calls them, and section 8's estimators in section 6. The plumbing (config and profiles, checkpoints
and resume, Colab and Drive, the hub, device and precision, reporting, the loop's metrics, evaluation's text
statistics and judge, the health table, errors) lives in the package rlhf_support/, one concern per module; it never
imports this module. The support names the notebooks call as `ru.<name>` come in through one line, from
rlhf_support.exports.

Shapes: B = batch, T = tokens, P = prompt tokens, R = response tokens, V = vocabulary, H = hidden.
`mask` tensors are 1 on the tokens that count (response tokens in PPO) and 0 elsewhere.

References (equation numbers are the papers'):
- [Radford19]  Radford et al., "Language Models are Unsupervised Multitask Learners" (GPT-2), 2019.
- [Ziegler19]  Ziegler et al., "Fine-Tuning Language Models from Human Preferences", 2019,
               arXiv:1909.08593. Eq. (2): the KL-shaped reward; Sec. 2.2: the adaptive KL coefficient.
- [Schulman16] Schulman et al., "High-Dimensional Continuous Control Using Generalized Advantage
               Estimation", 2016, arXiv:1506.02438. Eq. (16): GAE(gamma, lambda).
- [Schulman17] Schulman et al., "Proximal Policy Optimization Algorithms", 2017, arXiv:1707.06347.
               Eq. (7): the clipped surrogate objective; Eq. (9): the combined loss with a plain squared-error
               value loss. The clipped value loss is from OpenAI's implementation (baselines, ppo2).
- [Ouyang22]   Ouyang et al., "Training language models to follow instructions with human
               feedback" (InstructGPT), 2022, arXiv:2203.02155. Eq. (1): the pairwise reward loss.
- [Huang24]    Huang et al., "The N+ Implementation Details of RLHF with PPO: A Case Study on
               TL;DR Summarization", 2024, arXiv:2403.17031.
- [Gao23]      Gao, Schulman and Hilton, "Scaling Laws for Reward Model Overoptimization", 2023,
               arXiv:2210.10760: the proxy reward keeps rising while the gold one falls (the curve of notebook 3).
- [Ahmadian24] Ahmadian et al., "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human
               Feedback in LLMs", 2024, arXiv:2402.14740. Sec. 3.3: RLOO, the leave-one-out baseline of k samples.
- [Shao24]     Shao et al., "DeepSeekMath" (GRPO), 2024, arXiv:2402.03300. Eq. (3): the objective, with its KL in
               the loss; Sec. 4.1.2: outcome supervision, the score normalised by its group's mean and std.
- [Liu25]      Liu et al., "Understanding R1-Zero-Like Training: A Critical Perspective" (Dr. GRPO), 2025,
               arXiv:2503.20783. Sec. 3.1: GRPO without the std and without the 1/|o_i| length normalisation.
- [Hu25]       Hu, "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models", 2025,
               arXiv:2501.03262: per-token KL in the reward, returns-to-go normalised over the whole batch.
- [Beirami24]  Beirami et al., "Theoretical guarantees on the best-of-n alignment policy", 2024, arXiv:2401.01879:
               log n - (n - 1) / n is an upper bound on best-of-n's KL, exact only when ties have probability 0.
- [Rafailov23] Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
               2023, arXiv:2305.18290. Eq. (7): the DPO loss; Sec. 5: the implicit reward beta log(pi / pi_ref).
- [Hutto14]    Hutto and Gilbert, "VADER: A Parsimonious Rule-based Model for Sentiment Analysis of Social
               Media Text", ICWSM 2014: the independent judge (rlhf_support.evaluation.SentimentJudge).
"""

from __future__ import annotations

import math
import random
import sys
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

if typing.TYPE_CHECKING:  # for annotations only
    import pandas as pd

from rlhf_support.checkpoints import load_reward_weights, reward_model_folder
from rlhf_support.config import ADVANTAGE_ESTIMATORS, ESTIMATORS, GROUP_ESTIMATORS, PPOConfig
from rlhf_support.device import FP32, Precision, eval_mode, use_fused_gelu
from rlhf_support.evaluation import SentimentJudge, decode_prompts, decode_responses, summarise_evaluation
from rlhf_support.exercises import EXERCISES, CheckResult
from rlhf_support.exercises.pieces import Pieces, PPOPieces
from rlhf_support.exports import *  # noqa: F403  (the support names the notebooks call as ru.<name>: its __all__)
from rlhf_support.hub import load_pretrained, load_tokenizer
from rlhf_support.metrics import masked_mean, masked_var
from rlhf_support.model_calls import attention_mask_4d, in_chunks, kv_cache_name
from rlhf_support.preference_pairs import PreferencePairs, pairs_from_samples

_THIS_MODULE = sys.modules[__name__]  # the tested pieces, where a caller passes no `pieces` of its own


# -----------------------------------------------------------------------------
# 0. Your pieces: which function each notebook's training runs, yours (once checked) or the tested one


def pieces(notebook: str, device: torch.device | None = None, precision: Precision | None = None) -> Pieces:
    """The pieces a notebook's training runs: each exercise's tested function here, or the learner's once
    `pieces.check(name, my_fn)` passed (on `device` and `precision` too, the training's)."""
    return Pieces(notebook, _THIS_MODULE, device, precision)


def check_exercise(name: str, fn: Callable[..., Any], **settings: Any) -> CheckResult:
    """Check a learner's `fn` for exercise `name` against the tested one, on the CPU (never raises)."""
    return Pieces(EXERCISES[name].notebook, _THIS_MODULE).check(name, fn, **settings)


# -----------------------------------------------------------------------------
# 1. SFT: data shaping, the loss, samples, the schedule, the optimizer (notebook 1)


def tokenize_sentences(
    sentences: Sequence[str], tokenizer: Any, max_length: int, add_eos: bool = True
) -> list[list[int]]:
    """Token ids of each sentence, cut to `max_length`, with EOS as the last token when `add_eos`."""
    ids = tokenizer([s.strip() for s in sentences], add_special_tokens=False)["input_ids"]
    if not add_eos:
        return [row[:max_length] for row in ids]
    return [row[: max_length - 1] + [tokenizer.eos_token_id] for row in ids]


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token lists to one length: returns (input_ids, attention_mask), both (B, T)."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    for i, row in enumerate(rows):
        span = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
        input_ids[i, span] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, span] = 1
    return input_ids, attention_mask


def lm_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Labels for the causal-LM loss: the input ids, with -100 (ignored) where attention_mask is 0.

    Masking by attention mask, not by `input_ids == pad_token_id`, keeps the EOS in the loss even
    though GPT-2's pad token *is* its EOS token: that is how the model learns to stop.
    """
    return input_ids.masked_fill(attention_mask == 0, -100)  # (B, T)


def length_grouped_batches(
    lengths: Sequence[int],
    batch_size: int,
    generator: torch.Generator | None = None,
    group_factor: int = 50,
    drop_last: bool = False,
    shuffle: bool = True,
) -> list[list[int]]:
    """Shuffled batches of indices whose lengths are close, so short sentences are not padded to long ones.

    Indices are shuffled, cut into groups of `group_factor` batches, sorted by length inside each group,
    split into batches, and the batches are shuffled again: random order, little padding.
    With shuffle=False (for evaluation) the batches simply follow the sorted lengths, shortest first.
    """
    if not shuffle:
        ordered = sorted(range(len(lengths)), key=lambda i: lengths[i])
        batches = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
        return [b for b in batches if len(b) == batch_size] if drop_last else batches
    order = torch.randperm(len(lengths), generator=generator).tolist()
    group = batch_size * group_factor
    batches = []
    for start in range(0, len(order), group):
        chunk = sorted(order[start : start + group], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    if drop_last:
        batches = [b for b in batches if len(b) == batch_size]
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffled]


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy: the logits at position t score the label at t + 1; labels of -100 are ignored.

    logits (B, T, V), labels (B, T) as made by `lm_labels`. 'mean' averages over the counted tokens,
    'sum' adds them (to average over many batches, divide the sum by the count of counted tokens).
    """
    # L = -1/N sum_t m_t log p(x_t | x_<t), N = sum_t m_t: drop the last prediction and the first label
    shifted_logits = logits[:, :-1].float()  # (B, T-1, V)
    shifted_labels = labels[:, 1:]  # (B, T-1)
    return F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.shape[-1]),
        shifted_labels.reshape(-1),
        ignore_index=-100,
        reduction=reduction,
    )


def sample_batches(
    lm: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float = 1.0,
    precision: Precision = FP32,
    seed: int = 0,
    batch_size: int = 64,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One sampled continuation of each prompt (lists of token ids), batch by batch, in eval mode: yields
    (prompt_ids, prompt_mask, responses, response_mask), (b, P) left-padded and (b, R), on the model's device.

    One generator seeded `seed` draws every batch's tokens, so the same prompts and seed sample alike.
    """
    device = next(lm.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    with eval_mode(lm):
        for start in range(0, len(prompts), batch_size):
            prompt_ids, prompt_mask = pad_batch(prompts[start : start + batch_size], pad_id, side="left")
            prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)  # (b, P)
            responses, response_mask = generate(lm, prompt_ids, prompt_mask, max_new_tokens, eos_id, pad_id,
                                                temperature, generator, precision)  # fmt: skip
            yield prompt_ids, prompt_mask, responses, response_mask  # (b, R): responses and their mask


def sample_continuations(
    lm: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float = 1.0,
    precision: Precision = FP32,
    seed: int = 0,
    batch_size: int = 64,
) -> tuple[list[str], torch.Tensor]:
    """Sample one continuation per prompt (lists of token ids), in left-padded batches, in eval mode (`sample_batches`).

    Returns the continuations' text (EOS dropped) and whether each ended with EOS, (N,) bool on the CPU.
    A fixed `seed` draws the same random numbers each call, so before/after comparisons sample alike.
    """
    texts, ended = [], []
    batches = sample_batches(lm, tokenizer, prompts, max_new_tokens, temperature, precision, seed, batch_size)
    for _, _, responses, response_mask in batches:  # (b, R) each
        texts += decode_responses(tokenizer, responses, response_mask)
        ended.append(ends_with_eos(responses, response_mask, tokenizer.eos_token_id).cpu())
    return texts, torch.cat(ended) if ended else torch.zeros(0, dtype=torch.bool)


@torch.no_grad()
def validation_loss(
    lm: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], precision: Precision = FP32
) -> float:
    """Mean next-token loss per counted token over right-padded (input_ids, attention_mask) batches, in eval mode.

    Every token weighs the same, however the sentences were batched; perplexity = exp(this loss).
    """
    device = next(lm.parameters()).device
    with eval_mode(lm):
        total, count = torch.zeros((), device=device), 0
        for input_ids, attention_mask in batches:
            input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
            labels = lm_labels(input_ids, attention_mask)  # (B, T)
            with precision.autocast():
                logits = lm(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, T, V)
            total += causal_lm_loss(logits, labels, reduction="sum")
            count += int((labels[:, 1:] != -100).sum())
    return total.item() / max(count, 1)


def make_prompts(
    sentences: Sequence[str], tokenizer: Any, min_words: int = 2, max_words: int = 8, seed: int = 0
) -> list[list[int]]:
    """Prompts: each sentence's first k words as token ids, k drawn uniformly from [min_words, max_words].

    Whole words, so a prompt never stops inside a word; at least one word is left to continue, and sentences of
    fewer than min_words + 1 words are skipped.
    """
    rng = random.Random(seed)
    texts = []
    for sentence in sentences:
        words = sentence.split()
        if len(words) < min_words + 1:
            continue
        k = min(rng.randint(min_words, max_words), len(words) - 1)
        texts.append(" ".join(words[:k]))
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    parameters: Sequence[torch.Tensor] | Iterator[torch.Tensor],
    max_grad_norm: float,
) -> torch.Tensor:
    """Backward, unscale (fp16), clip the global gradient norm, step, zero the gradients; returns the norm.

    The norm is inf (or NaN) when fp16 gradients overflowed: the scaler then skipped the step (`grad_norm_metrics`).
    """
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(list(parameters), max_grad_norm)
    scaler.step(optimizer)  # skipped by the scaler when fp16 gradients overflowed
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def warmup_steps(warmup_ratio: float, total_steps: int) -> int:
    """Steps of linear warmup: warmup_ratio of the steps, rounded up (so any ratio > 0 warms up at least one step)."""
    return math.ceil(warmup_ratio * total_steps)


def make_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.0, eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not biases, LayerNorm gains); the fused kernel on CUDA and CPU.

    The fused kernel updates all parameters in one pass instead of a handful of ops per tensor: the
    same AdamW update, several times faster for a small model (PyTorch >= 2.4 has it on CPU).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    cpu_fused = tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 4)
    fused = all(p.is_cuda for p in params) or (cpu_fused and all(p.device.type == "cpu" for p in params))
    return torch.optim.AdamW(groups, lr=lr, eps=eps, fused=fused or None)


def lr_lambda(schedule: str, warmup: int, total_steps: int) -> Callable[[int], float]:
    """Learning-rate multiplier per step: linear warmup from 0 over `warmup` steps, then cosine, linear or no decay."""

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        done = min((step - warmup) / max(1, total_steps - warmup), 1.0)  # share of the decay behind us
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * done))
        if schedule == "linear":
            return 1.0 - done
        return 1.0

    return multiplier


# -----------------------------------------------------------------------------
# 2. The reward model: scoring sentences, the scalar head, position bookkeeping, its losses and metrics
# (notebook 2)


@torch.no_grad()
def score_sentences(
    reward_model: ScalarHeadModel,
    tokenizer: Any,
    sentences: Sequence[str],
    batch_size: int = 64,
    precision: Precision = FP32,
    max_length: int = 64,
) -> torch.Tensor:
    """Scores of sentences (tokens cut to max_length - 1, then EOS), in eval mode: (N,) float32 on CPU.

    Sentences are scored in batches of similar length (less padding) and returned in their own order;
    the model's train/eval mode is restored afterwards. max_length = k + 1 scores the first k tokens.
    """
    ids = tokenize_sentences(sentences, tokenizer, max_length)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    device = next(reward_model.parameters()).device
    rewards = torch.empty(len(ids), dtype=torch.float32)  # (N,)
    with eval_mode(reward_model):  # no dropout: the same sentence always gets the same reward
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            input_ids, attention_mask = pad_batch([ids[i] for i in batch], tokenizer.pad_token_id)  # (b, T)
            with precision.autocast():
                scores = reward_model.score(input_ids.to(device), attention_mask.to(device))  # (b,)
            rewards[batch] = scores.float().cpu()
    return rewards


def build_reward_model(trunk_name_or_path: str, device: torch.device | str = "cpu") -> ScalarHeadModel:
    """A reward model to train: a pretrained trunk (no LM head) and a freshly initialised scalar head."""
    from transformers import AutoModel

    trunk = load_pretrained(AutoModel.from_pretrained, trunk_name_or_path, "the model", dtype=torch.float32)
    return ScalarHeadModel(use_fused_gelu(trunk)).to(device)


def padded_forward(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> Any:
    """`model` on a padded batch (B, T): the mask as SDPA reads it (`attention_mask_4d`) and position ids that count
    real tokens only (`positions_from_mask`), so that left or right padding changes nothing. kwargs go to `model`."""
    return model(
        input_ids=input_ids,
        attention_mask=attention_mask_4d(model, attention_mask),
        position_ids=positions_from_mask(attention_mask),
        **kwargs,
    )


class ScalarHeadModel(nn.Module):
    """A GPT-2 trunk with a scalar head: one scalar per position, (B, T).

    Read at the last real token it is the reward model's score s(x); read at every response position
    it is a value function V(s_t).
    """

    def __init__(self, trunk: nn.Module, init_std: float | None = None):
        super().__init__()
        self.trunk = trunk
        self.head = ScalarHead(trunk.config.hidden_size, init_std)

    @property
    def config(self) -> Any:
        """The trunk's transformers config."""
        return self.trunk.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Scalars for every position, (B, T); position ids follow the mask, so padding side does not matter."""
        hidden = padded_forward(self.trunk, input_ids, attention_mask).last_hidden_state  # (B, T, H)
        return self.head(hidden).float()  # (B, T)

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The score s(x): the scalar at each row's last real token, (B,)."""
        return score_at_last_token(self(input_ids, attention_mask), attention_mask)  # (B,)


def last_real_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of the mask (right or left padding alike), (B,)."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(-1)  # (B,)


def score_at_last_token(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Each row's scalar at its last real token (B, T) -> (B,): the token that has read the whole text."""
    return values.gather(1, last_real_index(attention_mask)[:, None]).squeeze(1)  # (B,)


class ScalarHead(nn.Module):
    """A linear map from a hidden state to one scalar: h (..., H) -> (...)."""

    def __init__(self, hidden_size: int, init_std: float | None = None):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        # std 1/sqrt(H + 1) keeps the initial outputs ~N(0, 1) [Ziegler19]; 0 starts a value head at V = 0.
        std = 1 / math.sqrt(hidden_size + 1) if init_std is None else init_std
        nn.init.normal_(self.linear.weight, std=std) if std > 0 else nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (...)"""
        return self.linear(hidden).squeeze(-1)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count only real tokens, so left padding does not shift positions.

    A left-padded row [pad, pad, a, b] gets positions [0, 0, 0, 1]: `a` sits at position 0 as it
    would alone. `generate` does the same; a forward pass without these would see `a` at 2.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)


def pairwise_accuracy(scores: torch.Tensor, labels: torch.Tensor | Sequence[int], seed: int = 0) -> float:
    """Share of (positive, negative) pairs from `make_preference_pairs` where the positive scores higher."""
    pairs = make_preference_pairs([int(y) for y in labels], seed=seed)
    chosen, rejected = torch.tensor([c for c, _ in pairs]), torch.tensor([r for _, r in pairs])
    return float((scores[chosen] > scores[rejected]).float().mean())


def reward_metrics(
    scores: torch.Tensor, labels: torch.Tensor | Sequence[int], threshold: float = 0.0
) -> dict[str, float]:
    """accuracy of 'positive if score > threshold', ROC AUC and pairwise accuracy of rewards against 0/1 labels."""
    labels = torch.as_tensor(labels).flatten()  # (N,)
    predicted = (scores > threshold).long()  # (N,)
    return {
        "accuracy": float((predicted == labels).float().mean()),
        "auc": roc_auc(scores, labels),
        "pairwise_accuracy": pairwise_accuracy(scores, labels),
    }


def bce_reward_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with the score s as the logit, label l: -[l log sigmoid(s) + (1 - l) log sigmoid(-s)], mean."""
    return F.binary_cross_entropy_with_logits(scores, labels.to(scores.dtype))


def make_preference_pairs(labels: Sequence[int], seed: int = 0) -> list[tuple[int, int]]:
    """Pairs (chosen, rejected) of indices: a positive sentence preferred over a negative one, each used once."""
    rng = random.Random(seed)
    positives = [i for i, y in enumerate(labels) if y == 1]
    negatives = [i for i, y in enumerate(labels) if y == 0]
    rng.shuffle(positives)
    rng.shuffle(negatives)
    return list(zip(positives, negatives))


def pairwise_reward_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry loss [Ouyang22 eq. 1]: mean of -log sigmoid(s_chosen - s_rejected)."""
    return -F.logsigmoid(chosen_scores - rejected_scores).mean()


def roc_auc(scores: torch.Tensor | Sequence[float], labels: torch.Tensor | Sequence[int]) -> float:
    """Area under the ROC curve from ranks (Mann-Whitney U): P(a random positive outscores a random negative).

    Tied scores share the mean of their ranks, so a tie between a positive and a negative counts 1/2.
    """
    scores = torch.as_tensor(scores, dtype=torch.float64).flatten()  # (N,)
    positive = torch.as_tensor(labels).flatten() == 1  # (N,)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"roc_auc needs both labels; got {n_pos} positive and {n_neg} negative scores.")
    _, group, counts = torch.unique(scores, return_inverse=True, return_counts=True)  # groups of equal scores
    # a group of c equal scores whose highest rank is R shares the mean rank R - (c - 1) / 2
    counts = counts.double()
    ranks = (counts.cumsum(0) - (counts - 1) / 2)[group]  # (N,), 1 = lowest score
    # AUC = (sum of positive ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def load_reward_model(
    folder: str | Path, device: torch.device | str = "cpu"
) -> tuple[ScalarHeadModel, Any, dict[str, Any]]:
    """Load a reward model saved by `save_reward_model`: (model in eval mode, tokenizer, info: normalisation, threshold).

    The folder is checked first (`reward_model_folder`: there, intact, of this layout), then the trunk is built from
    its config, the head added, and every weight loaded (`load_reward_weights`)."""
    from transformers import AutoConfig, AutoModel

    folder, info = reward_model_folder(folder)
    trunk = AutoModel.from_config(AutoConfig.from_pretrained(folder))
    model = ScalarHeadModel(use_fused_gelu(trunk))
    load_reward_weights(model, folder)
    tokenizer = load_tokenizer(str(folder), padding_side="right")
    return model.to(device).eval(), tokenizer, info


def response_pairs(
    lm: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float = 1.0,
    precision: Precision = FP32,
    seed: int = 0,
) -> list[tuple[str, str, str]]:
    """Two sampled continuations of each prompt (token ids), as text: (prompt, first, second), in the prompts' order."""
    first, _ = sample_continuations(lm, tokenizer, prompts, max_new_tokens, temperature, precision, seed=seed)
    second, _ = sample_continuations(lm, tokenizer, prompts, max_new_tokens, temperature, precision, seed=seed + 1)
    return list(zip(tokenizer.batch_decode(prompts), first, second))


@torch.no_grad()
def last_token_features(
    reward_model: ScalarHeadModel,
    tokenizer: Any,
    sentences: Sequence[str],
    batch_size: int = 64,
    precision: Precision = FP32,
    max_length: int = 64,
) -> torch.Tensor:
    """The trunk's hidden state at each sentence's last real token (its EOS), what the head reads: (N, H) float32 on
    the CPU, in the sentences' order (a reward model of your own fits a new head on these, section 10)."""
    ids = tokenize_sentences(sentences, tokenizer, max_length)
    device = next(reward_model.parameters()).device
    features = torch.empty(len(ids), reward_model.config.hidden_size)  # (N, H)
    with eval_mode(reward_model):
        for start in range(0, len(ids), batch_size):
            input_ids, attention_mask = pad_batch(ids[start : start + batch_size], tokenizer.pad_token_id)
            input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)  # (b, T)
            with precision.autocast():
                hidden = padded_forward(reward_model.trunk, input_ids, attention_mask).last_hidden_state  # (b, T, H)
            last = last_real_index(attention_mask)  # (b,)
            features[start : start + len(last)] = hidden[torch.arange(len(last), device=device), last].float().cpu()
    return features


# -----------------------------------------------------------------------------
# 3. The rollout, PPO's steps (1) to (3): the policy, generation with the KV cache, scores, log-probs (notebook 3)


def ppo_pieces(cfg: PPOConfig, device: torch.device | None = None, precision: Precision | None = None) -> PPOPieces:
    """Notebook 3's pieces for the run `cfg` describes: step (5) and the policy loss follow cfg.advantage_estimator."""
    return PPOPieces(cfg, _THIS_MODULE, device, precision)


class PolicyWithValueHead(nn.Module):
    """The PPO policy: a causal LM plus a scalar value head on its last hidden state (shared trunk)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        self.value_head = ScalarHead(lm.config.hidden_size, init_std=0.0)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int | torch.Tensor = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, T, V) and values (B, T) in one pass.

        As in Hugging Face models, logits_to_keep=k > 0 computes the logits of the last k positions only,
        and a tensor of positions (K,) those positions only, (B, K, V): the LM head (H x V) is the largest
        matrix product of a small model, and PPO reads its output on the response only.
        """
        out = padded_forward(
            self.lm, input_ids, attention_mask, output_hidden_states=True, logits_to_keep=logits_to_keep
        )
        return out.logits, self.value_head(out.hidden_states[-1]).float()


def sample_next_token(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Sample one token per row from softmax(logits / temperature), optionally among the top_k: (B, V) -> (B,).

    Inverse-CDF sampling: one uniform number u per row picks the first token whose cumulative
    probability exceeds u. It draws the same distribution as torch.multinomial, which draws one
    random number per vocabulary entry (~30x slower for 64 x 1024 logits on a CPU). Sums run in float64 (exact enough
    that no token's share is rounded away), and a token of probability 0 is never picked.
    """
    logits = logits.float() if temperature == 1.0 else logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    cdf = probs.cumsum(-1, dtype=torch.float64)  # (B, V): P(token <= v)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=torch.float64)  # (B, 1)
    # the first v with cdf[v] > u * cdf[-1] (cdf[-1] is 1 up to rounding), so u never lands past the end
    token = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)  # (B, 1)
    return token.squeeze(-1).clamp_(max=probs.shape[-1] - 1)  # (B,)


@torch.no_grad()
def generate(
    lm: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    precision: Precision = FP32,
    top_k: int = 0,
    stop_check_every: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample continuations of left-padded prompts with the KV cache: returns (responses, response_mask), (B, R).

    The prompt is read once; after that each step feeds only the newest token and reuses the cached
    keys and values of everything before it. A row that has produced EOS keeps EOS as its last real
    token; later positions hold pad_token_id and 0 in the mask. R <= max_new_tokens: the loop stops
    once every row has finished (checked every `stop_check_every` steps to limit GPU syncs).
    """
    batch = prompt_ids.shape[0]
    attention_mask = prompt_mask.long()
    with precision.autocast():  # logits_to_keep=1: only the last position's logits are needed, not (B, P, V)
        out = padded_forward(lm, prompt_ids, attention_mask, use_cache=True, logits_to_keep=1)
    cache_name = kv_cache_name(lm)
    cache, next_logits = getattr(out, cache_name), out.logits[:, -1]  # the KV cache, and (B, V)
    next_position = attention_mask.sum(-1, keepdim=True)  # (B, 1): real tokens so far
    finished = torch.zeros(batch, dtype=torch.bool, device=prompt_ids.device)  # (B,)
    tokens, masks = [], []
    for step in range(max_new_tokens):
        token = sample_next_token(next_logits, temperature, top_k, generator)  # (B,)
        token = token.masked_fill(finished, pad_token_id)
        masks.append(~finished)
        tokens.append(token)
        finished = finished | (token == eos_token_id)
        if step + 1 == max_new_tokens or ((step + 1) % stop_check_every == 0 and bool(finished.all())):
            break
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, 1)], dim=1)
        with precision.autocast():  # the new token attends to every real token so far: a (B, 1, 1, K) mask
            out = lm(
                input_ids=token[:, None],
                attention_mask=attention_mask_4d(lm, attention_mask, query_length=1),
                position_ids=next_position,
                use_cache=True,
                **{cache_name: cache},
            )
        cache, next_logits = getattr(out, cache_name), out.logits[:, -1]
        next_position = next_position + 1
    responses = torch.stack(tokens, dim=1)  # (B, R)
    response_mask = torch.stack(masks, dim=1).long()  # (B, R)
    return responses, response_mask


def score_responses(
    reward_model: ScalarHeadModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    responses: torch.Tensor,
    response_mask: torch.Tensor,
) -> torch.Tensor:
    """Raw reward-model scores of prompt + response, read at each row's last real token, (B,)."""
    input_ids = torch.cat([prompt_ids, responses], dim=1)  # (B, P + R)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)  # (B, P + R)
    return reward_model.score(input_ids, attention_mask)  # (B,)


def ends_with_eos(responses: torch.Tensor, response_mask: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Whether each response's last real token is EOS, (B,) bool."""
    last = responses.gather(1, last_real_index(response_mask)[:, None]).squeeze(1)  # (B,)
    return (last == eos_token_id) & (response_mask.sum(1) > 0)


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[labels] per token: (B, T, V), (B, T) -> (B, T), computed in fp32."""
    # log p(y) = logit_y - log sum_v exp(logit_v); log_softmax computes it for every v in one fused kernel
    # (faster than logsumexp, which runs as several separate passes), then gather picks y
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per token: (B, T, V) -> (B, T)."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    # H = -sum_v p_v log p_v
    return -(logp.exp() * logp).sum(-1)


def response_positions(input_ids: torch.Tensor, response_start: int) -> torch.Tensor:
    """Positions whose logits predict the response tokens, P - 1 ... P + R - 2: (R,), for `logits_to_keep`.

    Computing the LM head there only skips the prompt positions' logits, which PPO never reads.
    """
    return torch.arange(response_start - 1, input_ids.shape[1] - 1, device=input_ids.device)  # (R,)


def policy_forward(
    policy: PolicyWithValueHead,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_start: int,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    entropy: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One pass of the policy: log-probs of the response tokens, values V(s_t) and entropy, each (B, R).

    Logits are divided by the sampling temperature, so the log-probs are those of the distribution the
    tokens were drawn from. V(s_t) is read where token t is predicted (the state before it). Position
    ids follow the mask (`PolicyWithValueHead.forward`). The entropy is a statistic: it carries no gradient;
    entropy=False skips it (None), e.g. in the minibatch passes, where it would be discarded.
    chunk_size: rows per pass, for the no-gradient pass over a whole batch (`in_chunks`); the results are the same.
    """
    predicting = response_positions(input_ids, response_start)  # (R,)

    def policy_chunk(r: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        logits, values = policy(input_ids[r], attention_mask[r], logits_to_keep=predicting)  # (b, R, V), (b, P + R)
        if temperature != 1.0:
            logits = logits / temperature
        logprobs = logprobs_from_logits(logits, input_ids[r, response_start:])  # (b, R)
        entropies = None
        if entropy:
            with torch.no_grad():
                entropies = entropy_from_logits(logits)  # (b, R)
        return logprobs, values[:, response_start - 1 : -1], entropies

    return in_chunks(policy_chunk, input_ids.shape[0], chunk_size)


def response_logprobs(
    lm: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_start: int,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Log-probs of the response tokens under a plain causal LM (the frozen reference), (B, R); in chunks of rows
    when chunk_size is given (`in_chunks`)."""
    predicting = response_positions(input_ids, response_start)  # (R,)

    def lm_chunk(r: slice) -> tuple[torch.Tensor]:
        logits = padded_forward(lm, input_ids[r], attention_mask[r], logits_to_keep=predicting).logits  # (b, R, V)
        if temperature != 1.0:
            logits = logits / temperature
        return (logprobs_from_logits(logits, input_ids[r, response_start:]),)  # (b, R)

    return in_chunks(lm_chunk, input_ids.shape[0], chunk_size)[0]


# -----------------------------------------------------------------------------
# 4. The PPO math, steps (4) to (7): the KL-shaped reward, GAE, the clipped losses, the KL coefficient


def compute_rewards(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: -kl_coef * KL on every response token, plus the score on the last one [Ziegler19 eq. 2].

    scores (B,); the rest (B, T). Returns (rewards, kl), both (B, T) and 0 outside the mask.
    """
    mask = mask.to(logprobs.dtype)
    # KL_t = log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t), a one-sample estimate of the KL
    kl = (logprobs - ref_logprobs) * mask  # (B, T)
    rewards = -kl_coef * kl  # (B, T)
    has_tokens = mask.sum(1) > 0  # (B,)
    last = last_real_index(mask)  # (B,)
    rewards = rewards.scatter_add(1, last[:, None], (scores * has_tokens).to(rewards.dtype)[:, None])
    return rewards, kl


def compute_gae(
    values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns by generalised advantage estimation [Schulman16 eq. 16]: (B, T) each.

    Backwards over the masked tokens of each row:
        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}
    where t+1 is the row's next masked token, and V = A = 0 after its last one (the episode ended).
    returns = advantages + values (before any whitening); both are 0 outside the mask.
    """
    mask = mask.to(values.dtype)
    batch, length = values.shape
    advantages = torch.zeros_like(values)
    next_value = values.new_zeros(batch)  # V of the next masked token; 0 past the end
    next_advantage = values.new_zeros(batch)
    for t in reversed(range(length)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        m = mask[:, t]
        advantages[:, t] = advantage * m
        next_value = m * values[:, t] + (1 - m) * next_value  # skip over unmasked positions
        next_advantage = m * advantage + (1 - m) * next_advantage
    returns = (advantages + values) * mask
    return advantages, returns


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked positions; keeps the mean when shift_mean=False; 0 outside the mask."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(x.dtype)


def clipped_surrogate(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped loss per token [Schulman17 eq. 7], (B, T), and its statistics over the masked tokens: the clip
    fraction and `approx_kl`."""
    # rho_t(theta) = pi_theta(y_t | s_t) / pi_old(y_t | s_t), the ratio (r_t is the reward)
    ratio = torch.exp(logprobs - old_logprobs)
    # L_t = max(-A rho, -A clip(rho, 1 - eps, 1 + eps)): the pessimistic (larger) of the two losses
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": approx_kl(logprobs, old_logprobs, mask),
        }
    return torch.maximum(unclipped, clipped), stats


def ppo_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped policy loss: the mean of `clipped_surrogate` over every response token; and its statistics."""
    losses, stats = clipped_surrogate(logprobs, old_logprobs, advantages, mask, clip_range)  # (B, T)
    return masked_mean(losses, mask), stats


def approx_kl(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """How far an update moved the policy: the k3 estimate of KL(pi_old || pi_theta), a masked mean (a scalar).

    On tokens sampled from pi_old, with rho = pi_theta / pi_old, k3 = (rho - 1) - log rho is >= 0 for every token and
    its mean is unbiased (E[rho] = 1 under pi_old): k1 = -log rho alone is unbiased too, but often negative and noisy.
    """
    log_ratio = logprobs - old_logprobs  # log rho, (B, T)
    return masked_mean(torch.exp(log_ratio) - 1 - log_ratio, mask)


def ppo_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip_range_value: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped value loss of PPO implementations (baselines' ppo2; [Schulman17] eq. 9 has it unclipped):
    0.5 * masked mean of max((V - R)^2, (clip(V, V_old +- eps) - R)^2)."""
    values_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    unclipped = (values - returns) ** 2
    clipped = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped > unclipped).float(), mask)}
    return loss, stats


class AdaptiveKLController:
    """beta that moves towards a target KL [Ziegler19 sec. 2.2]: beta *= 1 + clip(KL/target - 1, +-0.2) * n/horizon."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = float(init_kl_coef), float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Raise beta when the KL is above target, lower it when below: each update by a factor of at most
        1 +- 0.2 n_steps/horizon, so over one horizon of steps at most (1 + 0.2 n/H)^(H/n) <= e^0.2 = 1.22x up, and
        down to (1 - 0.2 n/H)^(H/n), between 0.80x (n = H) and e^-0.2 = 0.82x (small n/H)."""
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        """The coefficient, for checkpoints."""
        return {"value": self.value}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        """Restore the coefficient from a checkpoint."""
        self.value = float(state["value"])


class FixedKLController(AdaptiveKLController):
    """A beta that never changes, with the same interface as AdaptiveKLController."""

    def __init__(self, kl_coef: float):
        super().__init__(kl_coef, target=1.0, horizon=1)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Keep beta as it is."""


# -----------------------------------------------------------------------------
# 5. The loop and the evaluation: curve points, prompts, minibatches, the SFT-vs-PPO comparison


CURVE_METRICS = "positive_share judge_positive_share kl_to_ref distinct_2 repeat_share eos_share raw_score_mean".split()


def curve_metrics(
    lm: nn.Module,
    ref_lm: nn.Module,
    reward_model: ScalarHeadModel,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    cfg: PPOConfig,
    precision: Precision,
    threshold: float,
    judge: SentimentJudge,
) -> dict[str, float]:
    """One point of the over-optimisation curve: `evaluate_policy` on held-out prompts, as curve/ metrics.

    It samples with its own seeded generator, so it never changes what training draws: a run with the
    curve and one without it train identically.
    """
    summary, _ = evaluate_policy(lm, ref_lm, reward_model, tokenizer, prompts, cfg.response_length, cfg.temperature,
                                 seed=cfg.seed, batch_size=cfg.batch_size, precision=precision, threshold=threshold,
                                 judge=judge, chunk_size=cfg.minibatch_size)  # fmt: skip
    return {f"curve/{name}": summary[name] for name in CURVE_METRICS}


def sample_prompts(
    prompts: Sequence[Sequence[int]],
    batch_size: int,
    pad_id: int,
    generator: torch.Generator,
    device: torch.device,
    samples_per_prompt: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """batch_size / k prompts drawn with replacement, each repeated k = samples_per_prompt times in consecutive rows
    (a group), left-padded (so responses start at one column): both (B, P)."""
    picks = torch.randint(len(prompts), (batch_size // samples_per_prompt,), generator=generator, device=device)
    rows = [prompts[i] for i in picks.tolist() for _ in range(samples_per_prompt)]
    prompt_ids, prompt_mask = pad_batch(rows, pad_id, side="left")
    return prompt_ids.to(device), prompt_mask.to(device)  # (B, P)


def minibatch_indices(
    n: int, size: int, epochs: int, generator: torch.Generator, device: torch.device
) -> Iterator[torch.Tensor]:
    """For each of `epochs` passes, the row indices 0 .. n-1 shuffled and cut into minibatches of `size`: PPO's
    step (6) over a batch, DPO's steps over its pairs; nothing at all when n = 0 (every DPO pair tied)."""
    if n == 0:
        return
    for _epoch in range(epochs):
        yield from torch.randperm(n, generator=generator, device=device).split(size)


@torch.no_grad()
def evaluate_policy(
    lm: nn.Module,
    ref_lm: nn.Module,
    reward_model: ScalarHeadModel,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
    precision: Precision = FP32,
    threshold: float = 0.0,
    judge: SentimentJudge | None = None,
    chunk_size: int | None = None,
    known: set[str] | None = None,
) -> tuple[dict[str, float], pd.DataFrame]:
    """Sample one response per held-out prompt and measure it; returns (summary, one row per prompt).

    The same prompts, seed and temperature give two policies the same random numbers. Per row: the reward
    model's raw score of prompt + response and whether it is above `threshold` (saved by notebook 2: 0 for
    BCE, a median for a pairwise model), the judge's score of the same text, whether the response ends with
    EOS, the KL to `ref_lm` (sum over response tokens of log pi - log pi_ref, at `temperature`) and the
    reference's negative log-likelihood at temperature 1. Summary: the means and shares of those, the
    reference perplexity exp(total NLL / tokens), the mean response length, distinct-2 (`grouped_distinct_n`) and the
    share of responses repeating a word 3+ times (`repeats_a_word`); with `known` (`known_words` of the training
    text), the share of prompt + response words found in it (`real_word_share`) and of the response's own words
    (`response_real_word_share`). Log-prob passes run in chunks of `chunk_size` rows (default: batch_size).
    """
    import pandas as pd

    rows: dict[str, list] = {
        k: [] for k in ("prompt", "response", "raw_score", "ends_with_eos", "kl", "ref_nll", "length")
    }
    batches = sample_batches(lm, tokenizer, prompts, max_new_tokens, temperature, precision, seed, batch_size)
    for prompt_ids, prompt_mask, responses, response_mask in batches:  # (b, P), (b, R); lm in eval mode
        input_ids = torch.cat([prompt_ids, responses], 1)  # (b, P + R)
        attention_mask = torch.cat([prompt_mask, response_mask], 1)
        start, mask, chunk = prompt_ids.shape[1], response_mask.float(), chunk_size or batch_size
        with precision.autocast():
            raw_scores = score_responses(reward_model, prompt_ids, prompt_mask, responses, response_mask)  # (b,)
            logprobs = response_logprobs(lm, input_ids, attention_mask, start, temperature, chunk)  # (b, R)
            ref_logprobs = response_logprobs(ref_lm, input_ids, attention_mask, start, temperature, chunk)
            ref_logprobs_t1 = (
                ref_logprobs
                if temperature == 1.0
                else response_logprobs(ref_lm, input_ids, attention_mask, start, 1.0, chunk)
            )
        rows["prompt"] += decode_prompts(tokenizer, prompt_ids, prompt_mask)
        rows["response"] += decode_responses(tokenizer, responses, response_mask)
        rows["raw_score"] += raw_scores.float().tolist()
        rows["ends_with_eos"] += ends_with_eos(responses, response_mask, tokenizer.eos_token_id).tolist()
        rows["kl"] += ((logprobs - ref_logprobs) * mask).sum(1).tolist()
        rows["ref_nll"] += (-ref_logprobs_t1 * mask).sum(1).tolist()
        rows["length"] += response_mask.sum(1).tolist()
    table = pd.DataFrame(rows)
    table.insert(3, "positive", table["raw_score"] > threshold)
    if judge is not None:
        texts = [prompt + response for prompt, response in zip(table["prompt"], table["response"])]
        table.insert(4, "judge_score", judge.scores(texts))
        table.insert(5, "judge_positive", table["judge_score"] > judge.threshold)
    return summarise_evaluation(table, known), table


# -----------------------------------------------------------------------------
# 6. Beyond PPO (notebook 3, section 8): the critic-free estimators, their losses, best-of-n, DPO


# The critic-free estimators [Ahmadian24, Shao24, Liu25, Hu25]. Each gives every response token the return from
# that token on, G_t = sum_{t' >= t} gamma^(t' - t) r_t' (GAE with V = 0 and lambda = 1), after replacing the score
# on the last token by the score relative to a baseline: the other samples of the same prompt instead of a critic.
# The KL penalty stays per token in r_t, as for PPO. Groups are consecutive rows of k (`sample_prompts`). Their
# names, whether each compares a group, and how each averages its loss: config.ESTIMATORS, the one table.


def _groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """scores (B,) as (B / k, k): row g holds the k responses to prompt g."""
    if group_size < 2 or scores.shape[0] % group_size:
        raise ValueError(f"{scores.shape[0]} scores cannot form groups of samples_per_prompt={group_size} (k >= 2).")
    return scores.view(-1, group_size)


def _with_score(
    rewards: torch.Tensor, mask: torch.Tensor, scores: torch.Tensor, new_scores: torch.Tensor
) -> torch.Tensor:
    """The rewards (B, T) with each row's score on its last real token replaced by new_scores (B,)."""
    change = (new_scores - scores) * (mask.sum(1) > 0)  # (B,)
    return rewards.scatter_add(1, last_real_index(mask)[:, None], change.to(rewards.dtype)[:, None])


def dr_grpo_advantages(
    scores: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, group_size: int, gamma: float = 1.0
) -> torch.Tensor:
    """Dr. GRPO [Liu25]: score - group mean (no std), then G_t: (B, T); its loss is not length-normalised."""
    groups = _groups(scores, group_size)  # (B / k, k)
    relative = groups - groups.mean(1, keepdim=True)
    return returns_to_go(_with_score(rewards, mask, scores, relative.flatten()), mask, gamma)


def grpo_advantages(
    scores: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    gamma: float = 1.0,
    eps: float = 1e-4,
) -> torch.Tensor:
    """GRPO [Shao24]: (score - group mean) / (group std + eps), the std unbiased over the k samples, then G_t: (B, T)."""
    groups = _groups(scores, group_size)  # (B / k, k)
    relative = (groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + eps)
    return returns_to_go(_with_score(rewards, mask, scores, relative.flatten()), mask, gamma)


def returns_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = r_t + gamma * G_{t+1} over each row's masked tokens, backwards, G = 0 after the last: (B, T).

    That is GAE without a critic: with V = 0 each delta_t is r_t, and lambda = 1 sums them all."""
    advantages, _ = compute_gae(torch.zeros_like(rewards), rewards, mask, gamma, lam=1.0)
    return advantages


def rloo_advantages(
    scores: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, group_size: int, gamma: float = 1.0
) -> torch.Tensor:
    """RLOO [Ahmadian24]: the score minus the mean of the other k - 1 scores of its prompt, then G_t: (B, T)."""
    groups = _groups(scores, group_size)  # (B / k, k)
    others = (groups.sum(1, keepdim=True) - groups) / (group_size - 1)  # leave-one-out mean
    return returns_to_go(_with_score(rewards, mask, scores, (groups - others).flatten()), mask, gamma)


def reinforce_pp_advantages(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """REINFORCE++ [Hu25]: G_t with no baseline, whitened over every response token of the batch: (B, T)."""
    return masked_whiten(returns_to_go(rewards, mask, gamma), mask)


def compute_advantages(
    estimator: str,
    scores: torch.Tensor,
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
    group_size: int,
    whiten: bool,
    pieces: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step (5) the chosen way: (advantages, returns), (B, T) each. 'gae' uses the critic's values (whitened when
    `whiten`); the others ignore them, and their returns G_t (no critic learns them) are for the metrics only.
    `pieces` supplies compute_gae and the estimators (notebook 3 passes its pieces: yours where you wrote one)."""
    use = pieces if pieces is not None else _THIS_MODULE
    if estimator == "gae":
        advantages, returns = use.compute_gae(values, rewards, mask, gamma, lam)
        return (masked_whiten(advantages, mask) if whiten else advantages), returns
    if estimator == "reinforce_pp":
        advantages = use.reinforce_pp_advantages(rewards, mask, gamma)
    elif estimator in GROUP_ESTIMATORS:
        advantages = getattr(use, f"{estimator}_advantages")(scores, rewards, mask, group_size, gamma)
    else:
        raise ValueError(f"advantage_estimator={estimator!r}: use one of {', '.join(ADVANTAGE_ESTIMATORS)}.")
    return advantages, returns_to_go(rewards, mask, gamma)


# How each estimator's policy loss averages over tokens: PPO and REINFORCE-style methods over every token of the
# minibatch; GRPO each response's mean first (a long response's tokens count less) [Shao24 eq. 3]; Dr. GRPO a sum
# over tokens divided by a constant, the most tokens a response may have [Liu25].
LOSS_AGGREGATION = {name: averaging for name, (_, averaging) in ESTIMATORS.items()}  # from config's one table


def aggregate_loss(
    per_token: torch.Tensor, mask: torch.Tensor, how: str, max_tokens: int | None = None
) -> torch.Tensor:
    """A per-token loss (B, T) as one number: 'token' (mean over every masked token), 'sequence' (mean over rows of
    each row's mean) or 'constant' (masked sum / (B * max_tokens))."""
    if how == "token":
        return masked_mean(per_token, mask)
    if how == "sequence":
        return masked_mean(per_token, mask, dim=1).mean()
    if how == "constant":
        if not max_tokens:
            raise ValueError("aggregate_loss(how='constant') needs max_tokens, the most tokens a response may have.")
        return (per_token * mask.to(per_token.dtype)).sum() / (per_token.shape[0] * max_tokens)
    raise ValueError(f"aggregate_loss: how={how!r}; use 'token', 'sequence' or 'constant'.")


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    how: str,
    max_tokens: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's `clipped_surrogate`, averaged over tokens as an estimator's paper does (`aggregate_loss`: GRPO's
    'sequence', Dr. GRPO's 'constant'); with how='token' it is `ppo_policy_loss`."""
    losses, stats = clipped_surrogate(logprobs, old_logprobs, advantages, mask, clip_range)  # (B, T)
    return aggregate_loss(losses, mask, how, max_tokens), stats


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || reference) of one prompt's response, log n - (n - 1) / n nats [Beirami24]."""
    return math.log(n) - (n - 1) / n


def best_of_n(tables: Sequence[pd.DataFrame], n: int) -> tuple[dict[str, float], pd.DataFrame]:
    """Best-of-n, the no-training baseline: per prompt, the response with the highest raw reward-model score among
    the first n `evaluate_policy` tables of the reference (same prompts, one sample each). Its KL is best_of_n_kl(n)."""
    import pandas as pd

    raw_scores = np.stack([table["raw_score"].to_numpy() for table in tables[:n]])  # (n, prompts)
    best = raw_scores.argmax(0)  # (prompts,): the first of equal scores
    stacked = pd.concat(list(tables[:n]), keys=range(n))  # index (sample, prompt)
    chosen = stacked.loc[list(zip(best.tolist(), range(len(best))))].reset_index(drop=True)
    chosen["kl"] = best_of_n_kl(n)  # the closed form, not the sampled log-ratio (0: the samples are the reference's)
    return summarise_evaluation(chosen), chosen


# DPO [Rafailov23]: no reward model in the loss and no sampling while training. The policy learns from pairs
# (chosen y_w, rejected y_l) directly; its implicit reward is beta * log(pi / pi_ref).


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The DPO loss [Rafailov23 eq. 7], a mean over the pairs, and its statistics: from sequence log-probs (B,) of the
    chosen and the rejected responses under the policy and the reference."""
    # the implicit rewards beta log(pi / pi_ref) of each response
    chosen_rewards = beta * (chosen_logps - ref_chosen_logps)  # (B,)
    rejected_rewards = beta * (rejected_logps - ref_rejected_logps)  # (B,)
    # L = -log sigmoid(beta [(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))])
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    with torch.no_grad():
        stats = {
            "accuracy": (chosen_rewards > rejected_rewards).float().mean(),  # pairs the policy already ranks right
            "margin": (chosen_rewards - rejected_rewards).mean(),
            "chosen_reward": chosen_rewards.mean(),
            "rejected_reward": rejected_rewards.mean(),
        }
    return loss, stats


@torch.no_grad()
def sample_preference_pairs(
    lm: nn.Module,
    ref_lm: nn.Module,
    reward_model: ScalarHeadModel,
    prompts: Sequence[Sequence[int]],
    n_pairs: int,
    cfg: PPOConfig,
    score_mean: float,
    score_std: float,
    generator: torch.Generator,
    precision: Precision = FP32,
    pad_id: int = 0,
    eos_id: int = 0,
) -> PreferencePairs:
    """Two responses from `lm` to each of n_pairs prompts drawn from `prompts`, in batches of cfg.batch_size, scored as
    PPO's step (2) scores them (normalised, minus the missing-EOS penalty); the higher-scoring one is chosen, ties
    are dropped (`pairs_from_samples`). Their reference log-probs are computed once, here."""
    device = next(lm.parameters()).device
    rows: list[tuple] = []
    with eval_mode(lm):
        for done in range(0, 2 * n_pairs, cfg.batch_size):
            size = min(cfg.batch_size, 2 * n_pairs - done)
            prompt_ids, prompt_mask = sample_prompts(prompts, size, pad_id, generator, device, samples_per_prompt=2)
            responses, response_mask = generate(lm, prompt_ids, prompt_mask, cfg.response_length, eos_id, pad_id,
                                                cfg.temperature, generator, precision)  # fmt: skip
            input_ids = torch.cat([prompt_ids, responses], 1)  # (b, P + R): a prompt's two rows side by side
            attention_mask = torch.cat([prompt_mask, response_mask], 1)
            start = prompt_ids.shape[1]
            with precision.autocast():
                scores = (reward_model.score(input_ids, attention_mask) - score_mean) / score_std
                scores = scores - cfg.missing_eos_penalty * ~ends_with_eos(responses, response_mask, eos_id)
                ref_logps = sequence_logprobs(ref_lm, input_ids, attention_mask, start, cfg.minibatch_size)  # (b,)
            rows.append((input_ids, attention_mask, start, scores.float(), ref_logps.float()))
    return pairs_from_samples(rows, pad_id, device)


def sequence_logprobs(
    lm: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_start: int,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """log pi(y | x) of each row's response: the sum of its tokens' log-probs (temperature 1), (B,)."""
    logprobs = response_logprobs(lm, input_ids, attention_mask, response_start, 1.0, chunk_size)  # (B, R)
    return (logprobs * attention_mask[:, response_start:].to(logprobs.dtype)).sum(1)  # (B,)


@torch.no_grad()
def implicit_reward_agreement(
    lm: nn.Module,
    ref_lm: nn.Module,
    reward_model: ScalarHeadModel,
    prompts: Sequence[Sequence[int]],
    cfg: PPOConfig,
    score_mean: float,
    score_std: float,
    precision: Precision = FP32,
    pad_id: int = 0,
    eos_id: int = 0,
    n_pairs: int = 512,
) -> float:
    """How often `lm`'s implicit reward beta log(pi / pi_ref) ranks a pair of the reference's responses to held-out
    `prompts` as the reward model does (the pairs' chosen response first): a share in [0, 1]."""
    generator = torch.Generator(device=next(lm.parameters()).device).manual_seed(cfg.seed + 2)
    pairs = sample_preference_pairs(ref_lm, ref_lm, reward_model, prompts, n_pairs, cfg, score_mean, score_std,
                                    generator, precision, pad_id, eos_id)  # fmt: skip
    with eval_mode(lm), precision.autocast():
        chosen = sequence_logprobs(lm, pairs.chosen_ids, pairs.chosen_mask, pairs.start, cfg.minibatch_size)
        rejected = sequence_logprobs(lm, pairs.rejected_ids, pairs.rejected_mask, pairs.start, cfg.minibatch_size)
    margin = (chosen.float() - pairs.ref_chosen_logps) - (rejected.float() - pairs.ref_rejected_logps)  # / beta
    return float((margin > 0).float().mean())
