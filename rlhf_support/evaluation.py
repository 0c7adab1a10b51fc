"""Measuring what a model wrote: its text (decoded prompts and responses, a table of samples), text statistics (real
words, distinct-n, repeated words), the independent judge (VADER) and Wilson's interval for a share. The pieces of
notebook 3's evaluation that are bookkeeping, not RLHF: `rlhf_utils.evaluate_policy` samples and scores, these count."""

from __future__ import annotations

import math
import re
import typing
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .errors import RLHFError

if typing.TYPE_CHECKING:  # for annotations only: pandas loads when first used
    import pandas as pd


def decode_prompts(tokenizer: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> list[str]:
    """Text of each left-padded prompt (B, P), padding dropped."""
    return tokenizer.batch_decode(
        prompt_ids.masked_fill(prompt_mask == 0, tokenizer.eos_token_id).tolist(), skip_special_tokens=True
    )


def decode_responses(tokenizer: Any, responses: torch.Tensor, response_mask: torch.Tensor) -> list[str]:
    """Text of each response (masked tokens only, EOS dropped)."""
    texts = []
    for row, mask in zip(responses.tolist(), response_mask.tolist()):
        ids = [t for t, m in zip(row, mask) if m and t != tokenizer.eos_token_id]
        texts.append(tokenizer.decode(ids))
    return texts


def sample_table(
    tokenizer: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    rows: int = 4,
    **columns: torch.Tensor | Sequence[Any],
) -> pd.DataFrame:
    """The first `rows` episodes of a batch as text (prompt, response), with any per-episode columns given."""
    import pandas as pd

    table = {
        "prompt": decode_prompts(tokenizer, prompt_ids[:rows], prompt_mask[:rows]),
        "response": decode_responses(tokenizer, responses[:rows], response_mask[:rows]),
    }
    for name, values in columns.items():
        values = values[:rows].tolist() if isinstance(values, torch.Tensor) else list(values[:rows])
        table[name] = [round(v, 3) if isinstance(v, float) else v for v in values]
    return pd.DataFrame(table)


def words_of(text: str) -> list[str]:
    """The words of a text made of letters only, lower-cased: what `known_words` and `real_word_share` count."""
    return [word for word in text.lower().split() if word.isalpha()]


def known_words(sentences: Sequence[str]) -> set[str]:
    """Every word (letters only, lower case) of `sentences`: SST-2's training text, the vocabulary a sample is
    checked against."""
    return {word for sentence in sentences for word in words_of(sentence)}


def known_share(words: Sequence[str], known: set[str]) -> float:
    """The share of `words` that are in `known` (0 for no words)."""
    return sum(word in known for word in words) / max(1, len(words))


def real_word_share(texts: Sequence[str], known: set[str]) -> float:
    """The share of the texts' words (letters only, lower case) that are in `known`: near 1 for English a model
    learned from that text, lower for made-up words ("oppanding", "devives")."""
    return known_share([word for text in texts for word in words_of(text)], known)


def response_words(prompt: str, response: str) -> list[str]:
    """The words (letters only, lower case) of prompt + response that the response wrote: a response that goes on
    without a space finishes the prompt's last word, and that word is the response's."""
    text = prompt + response
    return [w for match in re.finditer(r"\S+", text) if match.end() > len(prompt) for w in words_of(match.group())]


def response_real_word_share(prompts: Sequence[str], responses: Sequence[str], known: set[str]) -> float:
    """`real_word_share` of the responses' own words (`response_words`): the prompts are people's words, and some of
    those are not in the training text either."""
    return known_share([word for p, r in zip(prompts, responses, strict=True) for word in response_words(p, r)], known)


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct-n: distinct word n-grams / all word n-grams over the texts (each text's own n-grams; 0 if none).

    1.0 = no n-gram repeats anywhere; a policy that collapses onto a few phrases scores near 0.
    Words are whitespace-separated, as in SST-2's tokenised text. It falls as texts are added (more chances to
    repeat) and rises as they get shorter (fewer n-grams): compare it only over the same number of texts.
    """
    grams = [tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


DISTINCT_GROUP = 128  # texts per distinct-n group: the curve's 128 prompts and the final 871 are measured alike


def grouped_distinct_n(texts: Sequence[str], n: int = 2, group: int = DISTINCT_GROUP) -> float:
    """Mean `distinct_n` over consecutive groups of `group` texts (a shorter last group is dropped unless it is the
    only one), so that 128 responses and 871 responses are measured on the same scale."""
    starts = range(0, len(texts) - group + 1, group) if len(texts) >= group else [0]
    return float(np.mean([distinct_n(texts[start : start + group], n) for start in starts]))


FUNCTION_WORDS = frozenset(
    "a an the and or but nor so yet of to in on at by for with from as into onto about than that this these those it "
    "its it's 's is are was were be been being am do does did has have had not n't no , . ! ? ; : -- - ' ` `` '' ( ) "
    "i you he she we they me him her us them my your his our their who whom which what what's there here very too "
    "all any some more most such can could will would should may might must".split()
)  # words that carry no content of their own


def is_content_word(word: str) -> bool:
    """Whether a word carries content: not a function word or punctuation (for "which word did PPO add most?")."""
    return word.lower() not in FUNCTION_WORDS and any(ch.isalpha() for ch in word)


def repeats_a_word(text: str, times: int = 3) -> bool:
    """Whether some word occurs at least `times` times in the text: the signature of a collapsed policy."""
    words = text.split()
    return any(words.count(word) >= times for word in set(words))


def binomial_interval(share: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson's 95% interval (z = 1.96) for a share measured on n independent yes/no verdicts: (low, high).

    On 128 prompts one prompt is 0.8 points, and a share near 70% is known to about +-8 points.
    """
    if n <= 0:
        raise ValueError(f"binomial_interval needs n >= 1 verdicts, got {n}.")
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return min(share, max(0.0, centre - half)), max(share, min(1.0, centre + half))  # it holds the share


class SentimentJudge:
    """An independent judge of sentiment: VADER (Hutto and Gilbert, 2014), a rule-based lexicon of ~7,500 words
    rated by people, with rules for negation, intensifiers and "but". Nothing in this series trained it and it
    never sees PPO's training, so it can disagree with the reward model PPO optimises against.

    `scores` gives VADER's compound score in [-1, 1]; `positive` applies VADER's own threshold (> 0.05).
    Its blind spots are its own: it likes strings of positive words however they are strung together.
    """

    name = "VADER"
    threshold = 0.05

    def __init__(self) -> None:
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError as error:
            raise RLHFError(
                "The independent judge needs the vaderSentiment package (its lexicon ships with it, no "
                "download): pip install vaderSentiment, or pip install -r requirements.txt."
            ) from error
        self._analyzer = SentimentIntensityAnalyzer()

    def scores(self, texts: Sequence[str]) -> list[float]:
        """VADER's compound score of each text, in [-1, 1]."""
        return [self._analyzer.polarity_scores(text)["compound"] for text in texts]

    def positive(self, texts: Sequence[str]) -> list[bool]:
        """Whether the judge calls each text positive (compound > 0.05)."""
        return [score > self.threshold for score in self.scores(texts)]


def summarise_evaluation(table: pd.DataFrame, known: set[str] | None = None) -> dict[str, float]:
    """The summary of an `evaluate_policy` table (one row per prompt): means, shares, perplexity, diversity."""
    summary = {
        "raw_score_mean": float(table["raw_score"].mean()),
        "positive_share": float(table["positive"].mean()),
    }
    if "judge_score" in table:
        summary.update(
            judge_score_mean=float(table["judge_score"].mean()),
            judge_positive_share=float(table["judge_positive"].mean()),
        )
    summary.update(
        {
            "kl_to_ref": float(table["kl"].mean()),
            "ref_perplexity": math.exp(table["ref_nll"].sum() / max(1, table["length"].sum())),
            "eos_share": float(table["ends_with_eos"].mean()),
            "response_length": float(table["length"].mean()),
            "distinct_2": grouped_distinct_n(list(table["response"]), 2),
            "repeat_share": float(table["response"].map(repeats_a_word).mean()),
        }
    )
    if known is not None:
        summary["real_word_share"] = real_word_share(list(table["prompt"] + table["response"]), known)
        summary["response_real_word_share"] = response_real_word_share(table["prompt"], table["response"], known)
    return summary
