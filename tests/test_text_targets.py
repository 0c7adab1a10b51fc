"""benchmarks/text_targets.py: the split of notebook 1's validation loss by word, and its Kneser-Ney yardstick."""

from __future__ import annotations

import math

import pytest

import rlhf_utils as ru
from benchmarks import text_targets


def test_word_losses_share_out_notebook_1s_validation_loss(tiny_lm, tokenizer, smoke_rows):
    sentences = [row["sentence"] for row in smoke_rows["validation"][:24]]
    rows = ru.tokenize_sentences(sentences, tokenizer, max_length=12)  # some cut short: EOS still last
    batches = [ru.pad_batch([r], tokenizer.pad_token_id) for r in rows]
    expected = ru.validation_loss(tiny_lm, batches) * sum(len(r) - 1 for r in rows)
    words = text_targets.word_losses(tiny_lm, tokenizer, sentences, max_length=12)
    assert sum(loss for sentence in words for _, loss in sentence) == pytest.approx(expected, rel=1e-5)
    assert all(sentence[-1][0] == "<eos>" and all(loss > 0 for _, loss in sentence[1:]) for sentence in words)
    # each word is one whitespace word of the sentence, until the cut
    full = [s for s, r in zip(sentences, rows, strict=True) if len(r) < 12]
    for sentence, row in zip(sentences, words, strict=True):
        if sentence in full:
            assert [w for w, _ in row[:-1]] == sentence.lower().split()


def test_word_kind_by_hand():
    known = {"fine", "film"}
    kinds = [text_targets.word_kind(w, known) for w in ("fine", "zorbly", "'s", "1990", "<eos>")]
    assert kinds == ["seen", "unseen", "other", "other", "eos"]


def test_kneser_ney_bigram_is_a_distribution_and_prefers_what_followed():
    train = ["a fine film", "a fine cast", "the film is fine", "a dull film"]
    probability = text_targets.kneser_ney_bigram(train)
    vocabulary = {w for s in train for w in s.split()}
    for previous in ("a", "fine", "film", "never-seen", "<s>"):
        assert sum(probability(previous, w) for w in vocabulary) == pytest.approx(1.0)
    assert probability("a", "fine") > probability("a", "dull") > probability("a", "cast") > 0
    # by hand: "a" is followed by fine x2 and dull x1 (3 times, 2 kinds); "cast" follows 1 of the 10 bigram types
    assert probability("a", "cast") == pytest.approx(0.75 * 2 / 3 * 1 / 10)
    # "fine" follows 2 different words ("a", "is"): 2 of the 10 types
    assert probability("a", "fine") == pytest.approx((2 - 0.75) / 3 + 0.75 * 2 / 3 * 2 / 10)


def test_seen_word_perplexities_beat_chance_on_repeated_text():
    train = ["a fine film", "a dull film", "the cast is fine"] * 5
    result = text_targets.seen_word_perplexities(
        train, ["a fine film", "the cast is dull"], {"fine", "film", "is", "cast", "dull"}
    )
    # the bigram knows "film" follows "fine" and "is" follows "cast": well below the unigram
    assert 1 < result["kneser_ney_bigram"] < 0.6 * result["unigram"] < math.inf
