"""The reward-model evaluation helpers of 2-RM Training.ipynb (score_sentences, roc_auc,
pairwise_accuracy, reward_metrics) against loops written from their definitions."""

import random

import pytest
import torch

import rlhf_utils as ru
from rlhf_support.profiles import train_bpe_tokenizer


def auc_by_pairs(scores, labels):
    """AUC from its definition: over all (positive, negative) pairs, 1 if the positive is higher, 1/2 on a tie."""
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_roc_auc_matches_the_pair_definition_with_ties():
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(2, 40)
        labels = [rng.randint(0, 1) for _ in range(n)]
        if len(set(labels)) < 2:
            continue
        scores = [rng.choice([-1.0, 0.0, 0.5, rng.gauss(0, 1)]) for _ in range(n)]  # many ties
        assert ru.roc_auc(torch.tensor(scores), torch.tensor(labels)) == pytest.approx(
            auc_by_pairs(scores, labels), abs=1e-12
        )


def test_roc_auc_extremes_and_bad_input():
    labels = torch.tensor([0, 0, 1, 1])
    assert ru.roc_auc(torch.tensor([0.1, 0.2, 0.3, 0.4]), labels) == 1.0
    assert ru.roc_auc(torch.tensor([0.4, 0.3, 0.2, 0.1]), labels) == 0.0
    assert ru.roc_auc(torch.zeros(4), labels) == 0.5
    with pytest.raises(ValueError):
        ru.roc_auc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1]))


def test_pairwise_accuracy_and_accuracy_against_loops():
    rng = random.Random(1)
    labels = [rng.randint(0, 1) for _ in range(50)]
    scores = torch.tensor([rng.gauss(0.8 * y, 1.0) for y in labels])
    pairs = ru.make_preference_pairs(labels, seed=0)
    expected_pairwise = sum(1 for c, r in pairs if scores[c] > scores[r]) / len(pairs)
    threshold = 0.3
    expected_accuracy = sum(1 for s, y in zip(scores.tolist(), labels) if (s > threshold) == (y == 1)) / len(labels)
    metrics = ru.reward_metrics(scores, labels, threshold)
    assert metrics["pairwise_accuracy"] == pytest.approx(expected_pairwise)
    assert metrics["accuracy"] == pytest.approx(expected_accuracy)
    assert metrics["auc"] == pytest.approx(auc_by_pairs(scores.tolist(), labels))


@pytest.fixture(scope="module")
def tiny_reward_model():
    from transformers import GPT2Config, GPT2Model

    sentences = ["the film is charming .", "a dull , lifeless mess", "the cast is wonderful", "it drags ."] * 20
    tokenizer = train_bpe_tokenizer(sentences, vocab_size=300, max_length=32)
    tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=32, n_layer=2, n_head=2)
    return ru.ScalarHeadModel(GPT2Model(config)), tokenizer


def test_score_sentences_matches_one_by_one_scores_in_order(tiny_reward_model):
    model, tokenizer = tiny_reward_model
    sentences = ["it drags .", "the film is charming and the cast is wonderful .", "a mess", "the cast is wonderful"]
    model.train()  # dropout on: score_sentences must switch it off and then restore train mode
    rewards = ru.score_sentences(model, tokenizer, sentences, batch_size=3, max_length=32)
    assert model.training
    model.eval()
    with torch.no_grad():
        for i, sentence in enumerate(sentences):
            ids = tokenizer(sentence, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            alone = model.score(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)).item()
            assert rewards[i].item() == pytest.approx(alone, abs=1e-5)


def test_score_sentences_max_length_scores_a_prefix_plus_eos(tiny_reward_model):
    model, tokenizer = tiny_reward_model
    sentence = "the film is charming and the cast is wonderful ."
    k = 3
    ids = tokenizer(sentence, add_special_tokens=False)["input_ids"][:k] + [tokenizer.eos_token_id]
    model.eval()
    with torch.no_grad():
        expected = model.score(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)).item()
    assert ru.score_sentences(model, tokenizer, [sentence], max_length=k + 1).item() == pytest.approx(
        expected, abs=1e-5
    )
