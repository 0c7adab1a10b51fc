"""The exercises of 1-SFT.ipynb: the labels (section 1.2), the loss and reading it (section 2)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .engine import Exercise, Inputs, mistake

# -----------------------------------------------------------------------------
# Inputs shared by the two code exercises


def right_mask(lengths: Sequence[int], width: int) -> torch.Tensor:
    """(B, T) mask whose row b holds lengths[b] ones, then zeros (right padding)."""
    return (torch.arange(width)[None, :] < torch.tensor(list(lengths))[:, None]).long()


def sentence_rows(
    rng: torch.Generator,
    pad_id: int,
    lengths: Sequence[int],
    width: int,
    eos_inside: int | None = None,
    no_eos: int | None = None,
) -> Inputs:
    """Right-padded token rows that end with EOS, where the pad id is the EOS id (as in GPT-2).

    eos_inside: a row that also holds an EOS in its middle (two sentences in one row); no_eos: a row cut before its
    EOS (its last real token is a word)."""
    ids = torch.randint(0, 50, (len(lengths), width), generator=rng)
    ids = torch.where(ids == pad_id, ids + 1, ids)  # words never use the pad id
    mask = right_mask(lengths, width)
    for row, length in enumerate(lengths):
        if length and row != no_eos:
            ids[row, length - 1] = pad_id  # the sentence's EOS
    if eos_inside is not None:
        ids[eos_inside, lengths[eos_inside] // 2] = pad_id
    return {"input_ids": ids.masked_fill(mask == 0, pad_id), "attention_mask": mask}


class LmLabels(Exercise):
    name, notebook, section = "lm_labels", "1-SFT", "1.2"
    asks_for = "labels (B, T): the input ids, with -100 wherever the loss must not look"
    outputs = ("labels",)
    rule = (
        "labels[b, t] is input_ids[b, t] where attention_mask[b, t] is 1 (a word or the EOS), and -100 where it is 0."
    )

    def random_inputs(self, rng: torch.Generator, settings: Mapping[str, Any]) -> Inputs:
        width = int(torch.randint(6, 10, (), generator=rng))
        lengths = torch.randint(2, width + 1, (4,), generator=rng).tolist()
        lengths[0], lengths[-1] = width, min(lengths[-1], width - 2)  # one full row, one padded
        return sentence_rows(rng, settings.get("pad_id", 50), lengths, width)

    def edge_cases(self, rng: torch.Generator, settings: Mapping[str, Any]) -> dict[str, Inputs]:
        pad = settings.get("pad_id", 50)
        return {
            "rows without padding": sentence_rows(rng, pad, [6, 6, 6], 6),
            "a row that is all padding": sentence_rows(rng, pad, [5, 0, 3], 5),
            "a row of one token, its EOS": sentence_rows(rng, pad, [6, 1, 4], 6),
            "two sentences in one row (an EOS in its middle)": sentence_rows(rng, pad, [7, 4, 6], 7, eos_inside=0),
            "a row cut before its EOS": sentence_rows(rng, pad, [6, 4, 5], 6, no_eos=2),
        }

    def describe(self, inputs: Inputs, output: str, index: tuple[int, ...]) -> str:
        token, real = int(inputs["input_ids"][index]), int(inputs["attention_mask"][index])
        row_length = int(inputs["attention_mask"][index[0]].sum())
        what = "padding" if not real else ("the row's last real token" if index[1] == row_length - 1 else "a token")
        if index[1] == 0 and real:
            what = "the row's first token"
        return f"{what}: attention mask {real}, input id {token}"

    def shapes(self, inputs: Inputs) -> tuple[tuple[int, ...], ...]:
        return (tuple(inputs["input_ids"].shape),)

    @mistake
    def mask_by_token_id(input_ids, attention_mask, pad_id=50):  # noqa: ANN001, ANN201
        """your labels drop the EOS. GPT-2's pad token is its EOS token, so finding padding by token id also removes
        every EOS the model must learn to predict: find padding with the attention mask instead."""
        return input_ids.masked_fill(input_ids == pad_id, -100)

    @mistake
    def drop_last_real_token(input_ids, attention_mask):  # noqa: ANN001, ANN201
        """your labels drop each row's last real token. That token is the EOS (or a word, in a row cut short): the
        model learns to stop by predicting it. Only padding, where the attention mask is 0, gets -100."""
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        last = (attention_mask * torch.arange(attention_mask.shape[1])).argmax(1)
        rows = torch.nonzero(attention_mask.sum(1) > 0).flatten()
        labels[rows, last[rows]] = -100
        return labels

    @mistake
    def mask_first_token(input_ids, attention_mask):  # noqa: ANN001, ANN201
        """your labels set position 0 to -100. Keep it: nothing predicts the first token, but the loss already skips
        it, since it pairs the logits at t with the label at t + 1. The labels line up with input_ids."""
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        labels[:, 0] = -100
        return labels

    @mistake
    def no_mask(input_ids, attention_mask):  # noqa: ANN001, ANN201
        """the padding is still in your labels: set it to -100, the index the loss ignores."""
        return input_ids.clone()

    @mistake
    def pad_as_zero(input_ids, attention_mask):  # noqa: ANN001, ANN201
        """0 is a real token id, so the loss would train on it: the ignored label is -100."""
        return input_ids.masked_fill(attention_mask == 0, 0)

    @mistake
    def shifted(input_ids, attention_mask):  # noqa: ANN001, ANN201
        """do not shift the labels: they line up with input_ids, and the loss pairs the logits at t with the label
        at t + 1 itself."""
        labels = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
        return torch.cat([labels, torch.full_like(input_ids[:, :1], -100)], 1)


def _ce_per_token(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of logits[:, :-1] against labels[:, 1:], per position (0 where ignored), and the count mask."""
    shifted, targets = logits[:, :-1].float(), labels[:, 1:]
    ce = F.cross_entropy(
        shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="none"
    )
    return ce.view(targets.shape), (targets != -100).float()


def logits_and_labels(rng: torch.Generator, lengths: Sequence[int], width: int, vocab: int = 11) -> Inputs:
    """Random logits (B, T, V) and labels with -100 on each row's padding."""
    mask = right_mask(lengths, width)
    labels = torch.randint(0, vocab, (len(lengths), width), generator=rng).masked_fill(mask == 0, -100)
    return {"logits": torch.randn(len(lengths), width, vocab, generator=rng) * 2, "labels": labels}


class CausalLmLoss(Exercise):
    name, notebook, section = "causal_lm_loss", "1-SFT", "2"
    asks_for = "the mean next-token cross-entropy over the counted tokens, a scalar tensor"
    outputs = ("loss",)
    rule = "shift (the logits at t score the label at t + 1), skip labels of -100, and average over the counted tokens."
    low_precision = ("logits",)  # the model's logits come out of autocast in the training's dtype
    differentiable = ("logits",)

    def random_inputs(self, rng: torch.Generator, settings: Mapping[str, Any]) -> Inputs:
        width = int(torch.randint(4, 8, (), generator=rng))
        lengths = torch.randint(2, width + 1, (3,), generator=rng).tolist()
        lengths[0] = width
        return logits_and_labels(rng, lengths, width)

    def edge_cases(self, rng: torch.Generator, settings: Mapping[str, Any]) -> dict[str, Inputs]:
        return {
            "rows without padding": logits_and_labels(rng, [5, 5], 5),
            "rows of very different lengths (7 and 2 tokens)": logits_and_labels(rng, [7, 2, 2], 7),
            "a row that is all padding": logits_and_labels(rng, [6, 0, 4], 6),
        }

    def shapes(self, inputs: Inputs) -> tuple[tuple[int, ...], ...]:
        return ((),)

    @mistake
    def no_shift(logits, labels):  # noqa: ANN001, ANN201
        """the logits at position t predict the token at t + 1: drop the last position's logits and the first label
        before the cross-entropy."""
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)

    @mistake
    def shifted_the_other_way(logits, labels):  # noqa: ANN001, ANN201
        """the shift goes the other way: the logits at t predict the label at t + 1, so pair logits[:, :-1] with
        labels[:, 1:]."""
        shifted, targets = logits[:, 1:].float(), labels[:, :-1]
        return F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), ignore_index=-100)

    @mistake
    def counts_ignored(logits, labels):  # noqa: ANN001, ANN201
        """you divide by every position, padding included: divide by the number of counted labels."""
        ce, counted = _ce_per_token(logits, labels)
        return (ce * counted).sum() / counted.numel()

    @mistake
    def per_sentence_mean(logits, labels):  # noqa: ANN001, ANN201
        """you average each sentence, then the sentences: every token must weigh the same, so a long sentence
        counts more than a short one. Sum over all counted tokens, divide by their number."""
        ce, counted = _ce_per_token(logits, labels)
        keep = counted.sum(1) > 0
        return ((ce * counted).sum(1)[keep] / counted.sum(1)[keep]).mean()

    @mistake
    def summed(logits, labels):  # noqa: ANN001, ANN201
        """that is the sum over the tokens: divide by their number, so the loss (and the step size) does not grow
        with the batch."""
        ce, counted = _ce_per_token(logits, labels)
        return (ce * counted).sum()


class SftProbability(Exercise):
    name, notebook, section = "sft_probability", "1-SFT", "2"
    asks_for = "the geometric-mean probability of the true next token, a number"
    outputs = ("probability",)
    rule = "L = -(1/N) sum log p_t, so the mean of log p_t is -L: undo the logarithm."
    trains = False

    def random_inputs(self, rng: torch.Generator, settings: Mapping[str, Any]) -> Inputs:
        return {"validation_loss": float(torch.empty(()).uniform_(0.5, 8.0, generator=rng))}

    def edge_cases(self, rng: torch.Generator, settings: Mapping[str, Any]) -> dict[str, Inputs]:
        return {"a loss of 0 (every token certain)": {"validation_loss": 0.0}}

    def shapes(self, inputs: Inputs) -> tuple[tuple[int, ...], ...]:
        return ((),)

    @mistake
    def perplexity(validation_loss):  # noqa: ANN001, ANN201
        """that is the perplexity, e^L: one over the probability asked for."""
        return math.exp(validation_loss)

    @mistake
    def base_10(validation_loss):  # noqa: ANN001, ANN201
        """the loss is in nats (natural logarithms): use e, not 10."""
        return 10 ** (-validation_loss)

    @mistake
    def reciprocal(validation_loss):  # noqa: ANN001, ANN201
        """the loss is a mean of -log p: undo the logarithm, e^(-L)."""
        return 1 / validation_loss if validation_loss else math.inf
