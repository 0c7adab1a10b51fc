"""What the cpu profile's two text measures are made of: per-word perplexity and the real-word share.

    python benchmarks/text_targets.py --dataset ../shared/data/sst2 --model outputs/cpu/sft_model   # ~1 minute

Per-word perplexity (notebook 1) is exp(the SFT model's summed loss on SST-2's validation sentences / their words).
This script hands each word the loss of its tokens and splits the sum by kind: words of letters that SST-2's training
sentences contain ("seen"), words of letters they never contain ("unseen": the model has to spell them from pieces),
everything else (punctuation, "'s", numbers), EOS, and each sentence's first word (only its later tokens are
predicted). Beside the model, on the seen words only, the same training text as a unigram model and as a Kneser-Ney
bigram (the previous word as context), so the model's grasp of context has a yardstick. Last, the real-word share
(notebook 3) of the held-out prompts alone: they are people's words, some of them not in the training text either,
and they count in the share of prompt + response however well the policy writes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def word_losses(lm: Any, tokenizer: Any, sentences: Sequence[str], max_length: int) -> list[list[tuple[str, float]]]:
    """Per sentence, (word, summed loss of its tokens in nats) for each word, as notebook 1 counts them: tokens cut to
    `max_length` with EOS last (as "<eos>"); the first token has no context and no loss, so the losses sum to
    notebook 1's."""
    import rlhf_utils as ru

    rows = ru.tokenize_sentences(sentences, tokenizer, max_length)
    out = []
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row])  # (1, T)
            logits = lm(input_ids=ids).logits  # (1, T, V)
            losses = ru.causal_lm_loss(logits, ids, reduction="none").tolist()  # (T - 1,): token t + 1's loss at t
            words: list[tuple[list[int], float]] = []
            for position, (token_id, piece) in enumerate(zip(row, tokenizer.convert_ids_to_tokens(row), strict=True)):
                loss = losses[position - 1] if position else 0.0
                if position == 0 or piece.startswith("\u0120") or token_id == tokenizer.eos_token_id:
                    words.append(([token_id], loss))  # "\u0120" (a space) starts a byte-level BPE word
                else:
                    words[-1] = (words[-1][0] + [token_id], words[-1][1] + loss)
            out.append([
                ("<eos>" if ids_[0] == tokenizer.eos_token_id else tokenizer.decode(ids_).strip().lower(), loss)
                for ids_, loss in words
            ])  # fmt: skip
    return out


def word_kind(word: str, known: set[str]) -> str:
    """'seen' or 'unseen' for a word of letters (in `known` or not), 'eos', or 'other' (punctuation, "'s", 1990)."""
    if word == "<eos>":
        return "eos"
    return ("seen" if word in known else "unseen") if word.isalpha() else "other"


def kneser_ney_bigram(sentences: Sequence[str], discount: float = 0.75) -> Callable[[str, str], float]:
    """p(word | previous) of interpolated Kneser-Ney over whitespace words (lower case), "<s>" before each sentence:
    a word's back-off weight is the number of different words it follows, not how often it occurs."""
    follows, context_count = Counter(), Counter()
    after: dict[str, set[str]] = defaultdict(set)
    before: dict[str, set[str]] = defaultdict(set)
    for sentence in sentences:
        words = ["<s>"] + sentence.lower().split()
        for previous, word in zip(words, words[1:], strict=False):
            follows[previous, word] += 1
            context_count[previous] += 1
            after[previous].add(word)
            before[word].add(previous)
    bigram_types = len(follows)

    def continuation(word: str) -> float:
        return len(before[word]) / bigram_types

    def probability(previous: str, word: str) -> float:
        total = context_count[previous]
        if not total:
            return continuation(word)
        return max(follows[previous, word] - discount, 0) / total + discount * len(after[previous]) / total * (
            continuation(word)
        )

    return probability


def seen_word_perplexities(train: Sequence[str], validation: Sequence[str], known: set[str]) -> dict[str, float]:
    """Per-word perplexity of a unigram model and a Kneser-Ney bigram of `train` on the seen words of `validation`
    (every word but each sentence's first, which has no previous word)."""
    unigram = Counter(word for sentence in train for word in sentence.lower().split())
    total = sum(unigram.values())
    bigram = kneser_ney_bigram(train)
    nll = {"unigram": 0.0, "kneser_ney_bigram": 0.0}
    count = 0
    for sentence in validation:
        words = sentence.lower().split()
        for previous, word in zip(words, words[1:], strict=False):
            if word_kind(word, known) == "seen":
                nll["unigram"] -= math.log(unigram[word] / total)
                nll["kneser_ney_bigram"] -= math.log(bigram(previous, word))
                count += 1
    return {name: math.exp(value / count) for name, value in nll.items()}


def main() -> None:
    """Measure and print; write the figures as JSON."""
    import rlhf_utils as ru

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dataset", default="../shared/data/sst2", help="folder of SST-2 (train.jsonl, validation.jsonl)"
    )
    parser.add_argument("--model", default="outputs/cpu/sft_model", help="notebook 1's saved SFT model")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "text_targets_cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    dataset = ru.load_sst2(args.dataset)
    train, validation = list(dataset["train"]["sentence"]), list(dataset["validation"]["sentence"])
    known = ru.known_words(train)
    tokenizer, lm = ru.load_tokenizer(args.model), ru.load_causal_lm(args.model).eval()
    max_length = ru.make_config(ru.SFTConfig, {"RLHF_PROFILE": "cpu"}).max_length

    loss, count = Counter(), Counter()
    for sentence in word_losses(lm, tokenizer, validation, max_length):
        for position, (word, nats) in enumerate(sentence):  # the first word: only its later tokens are predicted
            kind = "first word" if position == 0 else word_kind(word, known)
            loss[kind] += nats
            count[kind] += 1
    words = sum(len(sentence.split()) for sentence in validation)  # notebook 1's denominator
    result: dict[str, Any] = {
        "model": args.model,
        "per_word_perplexity": math.exp(sum(loss.values()) / words),
        "kinds": {
            kind: {
                "words": count[kind],
                "mean_nats": loss[kind] / count[kind],
                "share_of_loss": loss[kind] / sum(loss.values()),
            }
            for kind in ("seen", "unseen", "other", "eos", "first word")
        },
        "seen_words_perplexity": {"sft_model": math.exp(loss["seen"] / count["seen"])}
        | seen_word_perplexities(train, validation, known),
    }
    prompt_shares = []
    for seed in (0, 1, 2):  # notebook 3's held-out prompts for seeds 0-2 (they are drawn with seed + 1)
        prompts = ru.make_prompts(validation, tokenizer, seed=seed + 1)
        prompt_shares.append(ru.real_word_share([tokenizer.decode(p) for p in prompts], known))
    result["held_out_prompts_real_word_share"] = prompt_shares
    print(json.dumps(result, indent=1))
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
