"""Generation: left padding and positions, sampling with the KV cache against plain sampling, EOS handling,
reproducibility."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from conftest import MIXED_LENGTH_PROMPTS

import rlhf_utils as ru

# ---------------------------------------------------------------------------
# Sampling continuations for evaluation


def test_sample_continuations_is_repeatable_and_flags_eos(tiny_lm, tokenizer, smoke_rows):
    prompts = ru.make_prompts([r["sentence"] for r in smoke_rows["validation"][:10]], tokenizer)
    texts_a, ended_a = ru.sample_continuations(tiny_lm, tokenizer, prompts, max_new_tokens=6, seed=3, batch_size=4)
    texts_b, ended_b = ru.sample_continuations(tiny_lm, tokenizer, prompts, max_new_tokens=6, seed=3, batch_size=4)
    assert texts_a == texts_b and torch.equal(ended_a, ended_b)
    assert len(texts_a) == len(prompts) and ended_a.shape == (len(prompts),)
    # a model that always says EOS ends every sample, with empty text
    bias = torch.zeros(len(tokenizer))
    bias[tokenizer.eos_token_id] = 1e4
    hook = tiny_lm.lm_head.register_forward_hook(lambda module, args, out: out + bias)
    try:
        texts, ended = ru.sample_continuations(tiny_lm, tokenizer, prompts, max_new_tokens=6, seed=0)
    finally:
        hook.remove()
    assert bool(ended.all()) and all(t == "" for t in texts)


# ---------------------------------------------------------------------------
# Sampling with the KV cache draws what plain sampling draws


def with_eos_bias(lm: nn.Module, bias: float, eos_token_id: int) -> nn.Module:
    """Add `bias` to the EOS logit (the tied LM head has no bias of its own), so that rows end early."""
    b = torch.zeros(lm.lm_head.weight.shape[0])
    b[eos_token_id] = bias
    lm.lm_head.bias = nn.Parameter(b)
    return lm


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's statistic of observed counts against the expected n * p, over the tokens with p > 0."""
    n = counts.sum().item()
    expected = probs.double() * n
    keep = expected > 0
    return (((counts.double() - expected) ** 2)[keep] / expected[keep]).sum().item()


@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.5, 0), (2.0, 0), (1.0, 3)])
def test_sample_next_token_draws_softmax_of_logits(temperature, top_k):
    # p(last) ~ 2e-3: a rare token must come up at its own rate, not be rounded away
    logits = torch.tensor([float("-inf"), 1.0, -1.0, 2.0, 0.3, -4.0, float("-inf")])
    scaled = logits / temperature
    if top_k:
        scaled = scaled.masked_fill(scaled < torch.topk(scaled, top_k).values[-1], float("-inf"))
    probs = torch.softmax(scaled, -1)
    n = 200_000
    tokens = ru.sample_next_token(logits.expand(n, -1), temperature, top_k, torch.Generator().manual_seed(0))
    counts = torch.bincount(tokens, minlength=len(logits))
    assert counts[probs == 0].sum() == 0, counts  # impossible tokens never come up (first, last, below top_k)
    # 5 free categories (fewer with top_k): P(chi2 > 25) < 2e-4
    assert chi_square(counts, probs) < 25, (counts / n, probs)


def test_sample_next_token_is_reproducible_and_per_row():
    logits = torch.randn(64, 50)
    a = ru.sample_next_token(logits, generator=torch.Generator().manual_seed(3))
    b = ru.sample_next_token(logits, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # a row whose distribution is one token always gives that token
    sure = torch.full((4, 50), -30.0)
    sure[torch.arange(4), torch.tensor([0, 7, 48, 49])] = 30.0
    assert ru.sample_next_token(sure, generator=torch.Generator().manual_seed(0)).tolist() == [0, 7, 48, 49]


def plain_generate(
    lm: nn.Module,
    prompts: list[list[int]],
    max_new_tokens: int,
    eos: int,
    pad: int,
    temperature: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampling without the KV cache or padding: every step runs each row alone, from its first token."""
    rows = [list(p) for p in prompts]
    finished = [False] * len(rows)
    tokens, masks = [], []
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = torch.stack([lm(input_ids=torch.tensor([row])).logits[0, -1] for row in rows])  # (B, V)
        sampled = ru.sample_next_token(logits, temperature, 0, generator).tolist()
        step_tokens, step_mask = [], []
        for b, token in enumerate(sampled):
            step_mask.append(0 if finished[b] else 1)
            step_tokens.append(pad if finished[b] else token)
            if not finished[b]:
                rows[b].append(token)
                finished[b] = token == eos
        tokens.append(step_tokens)
        masks.append(step_mask)
    return torch.tensor(tokens).T, torch.tensor(masks).T


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_kv_cache_generation_samples_what_plain_generation_samples(tiny_lm, tokenizer, temperature):
    """Same random numbers, same tokens: the cached, left-padded batch sees the same distributions."""
    eos = pad = tokenizer.eos_token_id
    lm = with_eos_bias(tiny_lm, math.log(60.0), eos)  # some rows end early
    prompt_ids, prompt_mask = ru.pad_batch(MIXED_LENGTH_PROMPTS * 2, pad, side="left")
    responses, response_mask = ru.generate(
        lm, prompt_ids, prompt_mask, 10, eos, pad, temperature=temperature, generator=torch.Generator().manual_seed(5)
    )
    plain_responses, plain_mask = plain_generate(
        lm, MIXED_LENGTH_PROMPTS * 2, 10, eos, pad, temperature, torch.Generator().manual_seed(5)
    )
    width = responses.shape[1]  # generate may stop early once every row has finished
    assert torch.equal(responses, plain_responses[:, :width]) and torch.equal(response_mask, plain_mask[:, :width])
    assert not plain_mask[:, width:].any()
    lengths = response_mask.sum(1)
    assert (lengths < 10).any() and (lengths > 1).any()  # the comparison covers early EOS and long rows


# ---------------------------------------------------------------------------
# Left padding, positions, EOS, reproducibility


SENTENCES = [
    "the film is charming and witty .",
    "dull",
    "a mess of cliches , but the cast is wonderful",
    "it 's a gem",
]


def left_padded(tokenizer, sentences, add_eos=False):
    rows = ru.tokenize_sentences(sentences, tokenizer, max_length=32, add_eos=add_eos)
    ids, mask = ru.pad_batch(rows, tokenizer.pad_token_id, side="left")
    return rows, ids, mask


def token_logprobs(lm, ids, mask, use_positions=True):
    """log p(x_t | x_<t) for t >= 1, (B, T-1)."""
    kwargs = {"position_ids": ru.positions_from_mask(mask)} if use_positions else {}
    with torch.no_grad():
        logits = lm(input_ids=ids, attention_mask=mask, **kwargs).logits
    return ru.logprobs_from_logits(logits[:, :-1], ids[:, 1:])


def test_positions_from_mask_and_last_real_index():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [0, 1, 1, 1, 0]])
    assert ru.positions_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2], [0, 0, 1, 2, 2]]
    assert ru.last_real_index(mask).tolist() == [4, 2, 3]


def test_left_padded_batch_matches_rows_alone(tiny_lm, tokenizer):
    rows, ids, mask = left_padded(tokenizer, SENTENCES)
    assert mask[:, 0].tolist().count(0) >= 2  # several rows really are padded
    batch_lp = token_logprobs(tiny_lm, ids, mask)
    for i, row in enumerate(rows):
        alone = token_logprobs(tiny_lm, torch.tensor([row]), torch.ones(1, len(row), dtype=torch.long))[0]
        n = len(row) - 1
        torch.testing.assert_close(batch_lp[i, -n:] if n else batch_lp[i, :0], alone, atol=1e-5, rtol=0)


def test_left_padding_without_position_ids_changes_logprobs(tiny_lm, tokenizer):
    """Why positions_from_mask matters: without it the padded rows' tokens sit at shifted positions."""
    rows, ids, mask = left_padded(tokenizer, SENTENCES)
    with_positions = token_logprobs(tiny_lm, ids, mask, use_positions=True)
    without = token_logprobs(tiny_lm, ids, mask, use_positions=False)
    longest = max(range(len(rows)), key=lambda i: len(rows[i]))
    padded = [i for i, r in enumerate(rows) if len(r) < len(rows[longest]) and len(r) > 1]
    real = mask[:, 1:].bool()
    # the unpadded row is the same either way; every padded row with a real prediction differs
    torch.testing.assert_close(without[longest], with_positions[longest], atol=1e-5, rtol=0)
    for i in padded:
        gap = (without[i] - with_positions[i]).abs()[real[i]].max().item()
        assert gap > 1e-3, (i, gap)


def test_policy_and_reward_model_ignore_padding_side(tiny_lm, tokenizer, smoke_dirs):
    # no EOS at the end: the last real token differs from the pad token, as in a response cut at max length
    rows = ru.tokenize_sentences(SENTENCES, tokenizer, max_length=32, add_eos=False)
    left_ids, left_mask = ru.pad_batch(rows, tokenizer.pad_token_id, side="left")
    right_ids, right_mask = ru.pad_batch(rows, tokenizer.pad_token_id, side="right")
    torch.manual_seed(0)
    reward_model = ru.build_reward_model(str(smoke_dirs["base"])).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            reward_model.score(left_ids, left_mask), reward_model.score(right_ids, right_mask), atol=1e-5, rtol=0
        )
        policy = ru.PolicyWithValueHead(tiny_lm).eval()
        nn.init.normal_(policy.value_head.linear.weight)  # non-zero values to compare
        logits, values = policy(left_ids, left_mask)
        for i, row in enumerate(rows):
            n = len(row)
            alone_logits, alone_values = policy(torch.tensor([row]), torch.ones(1, n, dtype=torch.long))
            torch.testing.assert_close(logits[i, -n:], alone_logits[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(values[i, -n:], alone_values[0], atol=1e-5, rtol=0)


def sample(lm, tokenizer, max_new_tokens=12, seed=0, **kwargs):
    _, ids, mask = left_padded(tokenizer, SENTENCES * 4)
    generator = torch.Generator().manual_seed(seed)
    responses, response_mask = ru.generate(
        lm, ids, mask, max_new_tokens, tokenizer.eos_token_id, tokenizer.pad_token_id, generator=generator, **kwargs
    )
    return ids, mask, responses, response_mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_response_mask_ends_at_first_eos(tiny_lm, tokenizer, seed):
    eos = tokenizer.eos_token_id
    lm = with_eos_bias(tiny_lm, bias=math.log(100.0), eos_token_id=eos)  # p(EOS) ~ 0.09 per token
    _, _, responses, response_mask = sample(lm, tokenizer, max_new_tokens=12, seed=seed)
    assert responses.shape == response_mask.shape and responses.shape[1] == 12
    lengths = []
    for row, mask in zip(responses.tolist(), response_mask.tolist()):
        first_eos = row.index(eos) if eos in row else None
        n = len(row) if first_eos is None else first_eos + 1  # real tokens: up to and including EOS
        assert mask == [1] * n + [0] * (len(row) - n), (row, mask)
        assert all(t == tokenizer.pad_token_id for t in row[n:])
        lengths.append(n)
    finished = ru.ends_with_eos(responses, response_mask, eos).tolist()
    assert finished == [n < 12 or row[11] == eos for n, row in zip(lengths, responses.tolist())]
    assert len(set(lengths)) >= 3 and 12 in lengths  # ragged: early, late and unfinished rows


@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.7, 0), (1.3, 50)])
def test_sampled_logprobs_match_a_full_forward_pass(tiny_lm, tokenizer, monkeypatch, temperature, top_k):
    """The distribution each token was drawn from (KV cache, one token at a time) equals the one a
    single forward pass over prompt + response gives: the log-probs PPO later optimises."""
    lm = with_eos_bias(tiny_lm, bias=math.log(100.0), eos_token_id=tokenizer.eos_token_id)
    sampled_from = []
    original = ru.sample_next_token

    def recording(logits, *args, **kwargs):
        sampled_from.append(logits.clone())
        return original(logits, *args, **kwargs)

    monkeypatch.setattr(ru, "sample_next_token", recording)
    ids, mask, responses, response_mask = sample(lm, tokenizer, max_new_tokens=10, temperature=temperature, top_k=top_k)
    assert len(sampled_from) == responses.shape[1]
    cached_lp = torch.stack(
        [
            ru.logprobs_from_logits((logits / temperature)[:, None], responses[:, t : t + 1])[:, 0]
            for t, logits in enumerate(sampled_from)
        ],
        dim=1,
    )  # (B, R)
    full_ids = torch.cat([ids, responses], dim=1)
    full_mask = torch.cat([mask, response_mask], dim=1)
    with torch.no_grad():
        logits = lm(input_ids=full_ids, attention_mask=full_mask, position_ids=ru.positions_from_mask(full_mask)).logits
    P = ids.shape[1]
    forward_lp = ru.logprobs_from_logits(logits[:, P - 1 : -1] / temperature, responses)  # (B, R)
    real = response_mask.bool()
    assert real.sum() > 20
    torch.testing.assert_close(forward_lp[real], cached_lp[real], atol=1e-5, rtol=0)
    # the helpers PPO uses read the same positions and divide by the same temperature
    with torch.no_grad():
        ref_lp = ru.response_logprobs(lm, full_ids, full_mask, P, temperature)
        policy_lp, values, entropy = ru.policy_forward(ru.PolicyWithValueHead(lm), full_ids, full_mask, P, temperature)
    torch.testing.assert_close(ref_lp[real], cached_lp[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(policy_lp[real], cached_lp[real], atol=1e-5, rtol=0)
    assert values.shape == entropy.shape == responses.shape
    if top_k:  # every sampled token was among the top_k of its step
        for t, step_logits in enumerate(sampled_from):
            kth = torch.topk(step_logits, top_k, dim=-1).values[:, -1]
            chosen = step_logits.gather(1, responses[:, t : t + 1])[:, 0]
            assert bool((chosen >= kth)[real[:, t]].all())


def test_generate_is_reproducible_with_a_seed(tiny_lm, tokenizer):
    a = sample(tiny_lm, tokenizer, seed=3)[2]
    b = sample(tiny_lm, tokenizer, seed=3)[2]
    c = sample(tiny_lm, tokenizer, seed=4)[2]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_generate_stops_when_every_row_finished(tiny_lm, tokenizer):
    eos = tokenizer.eos_token_id
    lm = with_eos_bias(tiny_lm, bias=60.0, eos_token_id=eos)  # EOS is certain at the first step
    for every, expected_length in [(1, 1), (4, 4), (8, 8)]:
        _, _, responses, response_mask = sample(lm, tokenizer, max_new_tokens=30, stop_check_every=every)
        assert responses.shape[1] == expected_length
        assert (responses[:, 0] == eos).all() and response_mask[:, 0].all() and not response_mask[:, 1:].any()
    # without the bias rows rarely finish: the loop runs to max_new_tokens
    lm.lm_head.bias.data.zero_()
    assert sample(lm, tokenizer, max_new_tokens=30)[2].shape[1] == 30


def test_ends_with_eos_and_decode_responses(tokenizer):
    eos = tokenizer.eos_token_id
    good = tokenizer("a gem", add_special_tokens=False)["input_ids"]
    dull = tokenizer("dull", add_special_tokens=False)["input_ids"]
    width = len(good) + 3
    rows = [
        good + [eos] + [eos] * (width - len(good) - 1),  # finished, then padding
        (dull * width)[:width],  # ran out of tokens
        [eos] + [eos] * (width - 1),  # stopped at once
        [0] * width,
    ]  # empty mask
    masks = [[1] * (len(good) + 1) + [0] * (width - len(good) - 1), [1] * width, [1] + [0] * (width - 1), [0] * width]
    responses, response_mask = torch.tensor(rows), torch.tensor(masks)
    assert ru.ends_with_eos(responses, response_mask, eos).tolist() == [True, False, True, False]
    texts = ru.decode_responses(tokenizer, responses, response_mask)
    assert texts == [tokenizer.decode(good), tokenizer.decode((dull * width)[:width]), "", ""]
    assert texts[0].strip() == "a gem"
