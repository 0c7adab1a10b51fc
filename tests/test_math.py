"""The math, against plain loops written from the formulas: the SFT loss, the schedule and optimizer, the reward
model's metrics, distinct-n, and PPO's pieces (log-probs, the KL-shaped reward, GAE, whitening, the clipped losses,
the KL controllers)."""

from __future__ import annotations

import copy
import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import rlhf_utils as ru

# ---------------------------------------------------------------------------
# PPO's pieces against plain loops


SEEDS = [0, 1, 2, 3]


def ragged_mask(rng: random.Random, batch: int, length: int, holes: bool = False) -> list[list[int]]:
    """A 0/1 mask per row: some leading zeros (prompt side), a response, then zeros (padding).

    Row 0 has one token, row 1 has none, row 2 fills the row; with `holes`, some zeros inside.
    """
    rows = []
    for b in range(batch):
        if b == 0:
            start = rng.randrange(length)
            row = [1 if t == start else 0 for t in range(length)]
        elif b == 1:
            row = [0] * length
        elif b == 2:
            row = [1] * length
        else:
            start = rng.randrange(length)
            end = rng.randrange(start + 1, length + 1)
            row = [1 if start <= t < end else 0 for t in range(length)]
        if holes and sum(row) > 2:
            ones = [t for t, m in enumerate(row) if m]
            for t in ones[1:-1]:
                if rng.random() < 0.3:
                    row[t] = 0
        rows.append(row)
    return rows


def randn(rng: random.Random, *shape: int, scale: float = 1.0):
    """Nested lists of N(0, scale^2) floats."""
    if len(shape) == 1:
        return [rng.gauss(0.0, scale) for _ in range(shape[0])]
    return [randn(rng, *shape[1:], scale=scale) for _ in range(shape[0])]


def T(x) -> torch.Tensor:
    """Nested lists -> float64 tensor (so the comparison measures the formula, not rounding)."""
    return torch.tensor(x, dtype=torch.float64)


def close(actual: torch.Tensor, expected, tol: float = 1e-6) -> None:
    """Assert a tensor equals nested lists / a float within `tol` (fp32 rounding), with a readable message."""
    expected = torch.as_tensor(expected, dtype=torch.float64)
    actual = actual.detach().to(torch.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.isfinite(actual).all(), actual
    diff = (actual - expected).abs().max().item() if actual.numel() else 0.0
    assert diff <= tol, f"max |diff| = {diff:.3g} > {tol}\nactual={actual}\nexpected={expected}"


def ref_log_softmax(row: list[float]) -> list[float]:
    m = max(row)
    log_z = m + math.log(sum(math.exp(x - m) for x in row))
    return [x - log_z for x in row]


def ref_masked_mean(x: list[list[float]], mask: list[list[int]]) -> float:
    total, count = 0.0, 0
    for xr, mr in zip(x, mask):
        for v, m in zip(xr, mr):
            if m:
                total += v
                count += 1
    return total / count if count else 0.0


def ref_masked_var(x: list[list[float]], mask: list[list[int]]) -> float:
    mean = ref_masked_mean(x, mask)
    return ref_masked_mean([[(v - mean) ** 2 for v in row] for row in x], mask)


def ref_compute_gae(values, rewards, mask, gamma, lam):
    """A_t = delta_t + gamma * lam * A_next over each row's masked tokens, walked backwards."""
    advantages, returns = [], []
    for v_row, r_row, m_row in zip(values, rewards, mask):
        adv = [0.0] * len(v_row)
        next_value, next_adv = 0.0, 0.0  # V = A = 0 after the last masked token
        for t in reversed(range(len(v_row))):
            if not m_row[t]:
                continue
            delta = r_row[t] + gamma * next_value - v_row[t]
            adv[t] = delta + gamma * lam * next_adv
            next_value, next_adv = v_row[t], adv[t]
        advantages.append(adv)
        returns.append([(a + v) if m else 0.0 for a, v, m in zip(adv, v_row, m_row)])
    return advantages, returns


def clip(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), hi)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_logprobs_from_logits(seed, scale):
    rng = random.Random(seed)
    B, L, V = 3, 5, 7
    logits = randn(rng, B, L, V, scale=scale)
    labels = [[rng.randrange(V) for _ in range(L)] for _ in range(B)]
    expected = [[ref_log_softmax(logits[b][t])[labels[b][t]] for t in range(L)] for b in range(B)]
    out = ru.logprobs_from_logits(T(logits), torch.tensor(labels))
    close(out, expected, tol=1e-6 * scale)  # computed in fp32


def test_logprobs_from_low_precision_logits_are_fp32():
    rng = random.Random(0)
    logits = T(randn(rng, 2, 3, 11, scale=5.0))
    labels = torch.tensor([[1, 2, 3], [4, 5, 10]])
    out = ru.logprobs_from_logits(logits.to(torch.bfloat16), labels)
    assert out.dtype == torch.float32
    expected = [
        [ref_log_softmax(row)[y] for row, y in zip(r, ys)]
        for r, ys in zip(logits.to(torch.bfloat16).double().tolist(), labels.tolist())
    ]
    close(out, expected, tol=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
def test_entropy_from_logits(seed):
    rng = random.Random(seed)
    logits = randn(rng, 2, 4, 9, scale=3.0)
    expected = [[-sum(math.exp(lp) * lp for lp in ref_log_softmax(row)) for row in r] for r in logits]
    close(ru.entropy_from_logits(T(logits)), expected, tol=1e-5)
    # a uniform distribution over V has entropy log V
    close(ru.entropy_from_logits(torch.zeros(1, 1, 9)), [[math.log(9)]], tol=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_masked_mean_and_var(seed):
    rng = random.Random(seed)
    mask = ragged_mask(rng, 6, 7, holes=True)
    x = randn(rng, 6, 7, scale=2.0)
    close(ru.masked_mean(T(x), T(mask)), ref_masked_mean(x, mask))
    close(ru.masked_var(T(x), T(mask)), ref_masked_var(x, mask))
    per_row = [ref_masked_mean([xr], [mr]) for xr, mr in zip(x, mask)]  # 0 for the empty row
    close(ru.masked_mean(T(x), T(mask), dim=1), per_row)


def test_masked_statistics_of_one_element_have_no_nan():
    x = T([[3.0, -7.0, 100.0]])
    mask = T([[0, 1, 0]])
    close(ru.masked_mean(x, mask), -7.0)
    close(ru.masked_var(x, mask), 0.0)
    close(ru.masked_whiten(x, mask), [[0.0, 0.0, 0.0]])
    close(ru.masked_whiten(x, mask, shift_mean=False), [[0.0, -7.0, 0.0]])
    close(ru.masked_mean(x, T([[0, 0, 0]])), 0.0)  # an empty mask gives 0, not NaN


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten(seed, shift_mean):
    rng = random.Random(seed)
    mask = ragged_mask(rng, 5, 6, holes=True)
    x = randn(rng, 5, 6, scale=3.0)
    mean, var = ref_masked_mean(x, mask), ref_masked_var(x, mask)
    eps = 1e-8
    expected = [
        [((v - mean) / math.sqrt(var + eps) + (0.0 if shift_mean else mean)) * m for v, m in zip(xr, mr)]
        for xr, mr in zip(x, mask)
    ]
    out = ru.masked_whiten(T(x), T(mask), shift_mean=shift_mean)
    close(out, expected)
    # properties: masked mean 0 (or the original mean kept), masked variance ~1, 0 outside the mask
    out_list = out.tolist()
    close(torch.tensor(ref_masked_mean(out_list, mask)), 0.0 if shift_mean else mean)
    close(torch.tensor(ref_masked_var(out_list, mask)), 1.0, tol=1e-6)
    assert all(v == 0 for vr, mr in zip(out_list, mask) for v, m in zip(vr, mr) if not m)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kl_coef", [0.0, 0.05, 0.7])
def test_compute_rewards(seed, kl_coef):
    rng = random.Random(seed)
    B, L = 6, 8
    mask = ragged_mask(rng, B, L)
    logprobs, ref_logprobs = randn(rng, B, L), randn(rng, B, L)
    scores = randn(rng, B, scale=3.0)
    exp_rewards, exp_kl = [], []
    for b in range(B):
        kl_row = [(logprobs[b][t] - ref_logprobs[b][t]) if mask[b][t] else 0.0 for t in range(L)]
        reward_row = [-kl_coef * k for k in kl_row]
        masked = [t for t in range(L) if mask[b][t]]
        if masked:  # the score is added on the last response token only
            reward_row[masked[-1]] += scores[b]
        exp_rewards.append(reward_row)
        exp_kl.append(kl_row)
    rewards, kl = ru.compute_rewards(T(scores), T(logprobs), T(ref_logprobs), T(mask), kl_coef)
    close(kl, exp_kl)
    close(rewards, exp_rewards)
    # the row without tokens gets nothing at all (no score dropped on a padding position)
    assert rewards[1].abs().sum() == 0


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 0.0), (1.0, 1.0), (0.5, 1.0)])
@pytest.mark.parametrize("holes", [False, True])
def test_compute_gae(seed, gamma, lam, holes):
    rng = random.Random(seed)
    B, L = 7, 9
    mask = ragged_mask(rng, B, L, holes=holes)
    values, rewards = randn(rng, B, L), randn(rng, B, L)
    exp_adv, exp_ret = ref_compute_gae(values, rewards, mask, gamma, lam)
    adv, ret = ru.compute_gae(T(values), T(rewards), T(mask), gamma, lam)
    close(adv, exp_adv)
    close(ret, exp_ret)


@pytest.mark.parametrize("seed", SEEDS)
def test_gae_special_cases(seed):
    """lam=0 is one-step TD; lam=1, gamma=1 is Monte Carlo: future rewards minus V_t."""
    rng = random.Random(seed)
    B, L = 6, 8
    mask = ragged_mask(rng, B, L, holes=True)
    values, rewards = randn(rng, B, L), randn(rng, B, L)
    td, mc = [], []
    for b in range(B):
        masked = [t for t in range(L) if mask[b][t]]
        td_row, mc_row = [0.0] * L, [0.0] * L
        for i, t in enumerate(masked):
            next_v = values[b][masked[i + 1]] if i + 1 < len(masked) else 0.0
            td_row[t] = rewards[b][t] + 0.9 * next_v - values[b][t]
            mc_row[t] = sum(rewards[b][s] for s in masked[i:]) - values[b][t]
        td.append(td_row)
        mc.append(mc_row)
    close(ru.compute_gae(T(values), T(rewards), T(mask), gamma=0.9, lam=0.0)[0], td)
    adv, ret = ru.compute_gae(T(values), T(rewards), T(mask), gamma=1.0, lam=1.0)
    close(adv, mc)
    # Monte Carlo returns are the reward-to-go, independent of the values
    close(
        ret,
        [
            [sum(rewards[b][s] for s in range(t, L) if mask[b][s]) if mask[b][t] else 0.0 for t in range(L)]
            for b in range(B)
        ],
    )


def test_gae_worked_example():
    """Numbers checkable by hand: rewards (0, 0, 1), values (0.5, 0.5, 0.5), gamma = lam = 1."""
    adv, ret = ru.compute_gae(T([[0.5, 0.5, 0.5, 9.0]]), T([[0.0, 0.0, 1.0, 9.0]]), T([[1, 1, 1, 0]]), 1.0, 1.0)
    close(adv, [[0.5, 0.5, 0.5, 0.0]])
    close(ret, [[1.0, 1.0, 1.0, 0.0]])


def ref_policy_loss(logprobs, old_logprobs, advantages, mask, eps):
    losses, clipped_flags, kls, ratios, grads, count = [], [], [], [], [], 0
    for b in range(len(mask)):
        grad_row = []
        for t in range(len(mask[b])):
            ratio = math.exp(logprobs[b][t] - old_logprobs[b][t])
            a = advantages[b][t]
            unclipped = -a * ratio
            clipped = -a * clip(ratio, 1 - eps, 1 + eps)
            # d/dlogprob of max(...): -A*ratio on the unclipped branch, 0 on the clipped (constant) one
            grad_row.append(-a * ratio if (unclipped >= clipped and mask[b][t]) else 0.0)
            if mask[b][t]:
                count += 1
                losses.append(max(unclipped, clipped))
                clipped_flags.append(1.0 if clipped > unclipped else 0.0)
                kls.append((ratio - 1) - math.log(ratio))
                ratios.append(ratio)
        grads.append(grad_row)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    grads = [[g / count for g in row] for row in grads]
    return mean(losses), mean(clipped_flags), mean(kls), mean(ratios), grads


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("eps", [0.1, 0.2])
def test_ppo_policy_loss(seed, eps):
    rng = random.Random(seed)
    B, L = 6, 7
    mask = ragged_mask(rng, B, L, holes=True)
    old = randn(rng, B, L)
    new = [[o + rng.gauss(0, 0.3) for o in row] for row in old]  # ratios spread around 1, many clipped
    advantages = randn(rng, B, L)
    exp_loss, exp_clipfrac, exp_kl, exp_ratio, exp_grad = ref_policy_loss(new, old, advantages, mask, eps)
    logprobs = T(new).requires_grad_(True)
    loss, stats = ru.ppo_policy_loss(logprobs, T(old), T(advantages), T(mask), eps)
    close(loss, exp_loss)
    close(stats["clipfrac"], exp_clipfrac)
    close(stats["approx_kl"], exp_kl)
    close(ru.approx_kl(T(new), T(old), T(mask)), exp_kl)  # the k3 estimate alone, as the notebook's exercise asks
    assert 0 < exp_clipfrac < 1  # the inputs exercise both branches
    loss.backward()
    close(logprobs.grad, exp_grad)


def test_policy_gradient_vanishes_where_ratio_clipped_pessimistically():
    eps = 0.2
    # A > 0 and ratio above 1 + eps, or A < 0 and ratio below 1 - eps: no gradient (the update already went far enough)
    # A > 0 and ratio below 1 - eps, or A < 0 and ratio above 1 + eps: the gradient stays (it pulls back)
    ratios = [1.5, 0.5, 0.5, 1.5, 1.1, 0.9]
    advantages = [1.0, -1.0, 1.0, -1.0, 1.0, -1.0]
    should_flow = [False, False, True, True, True, True]
    logprobs = torch.tensor([[math.log(r) for r in ratios]], dtype=torch.float64, requires_grad=True)
    loss, stats = ru.ppo_policy_loss(
        logprobs, torch.zeros(1, 6, dtype=torch.float64), T([advantages]), torch.ones(1, 6), eps
    )
    loss.backward()
    for g, flows, a, r in zip(logprobs.grad[0].tolist(), should_flow, advantages, ratios):
        if flows:
            assert g == pytest.approx(-a * r / 6), (a, r)
        else:
            assert g == 0.0, (a, r)
    close(stats["clipfrac"], 2 / 6)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("eps", [0.05, 0.2])
def test_ppo_value_loss(seed, eps):
    rng = random.Random(seed)
    B, L = 5, 6
    mask = ragged_mask(rng, B, L, holes=True)
    old_values, returns = randn(rng, B, L), randn(rng, B, L)
    values = [[o + rng.gauss(0, 0.3) for o in row] for row in old_values]
    losses, flags = [], []
    for b in range(B):
        for t in range(L):
            if mask[b][t]:
                v, v_old, ret = values[b][t], old_values[b][t], returns[b][t]
                v_clipped = v_old + clip(v - v_old, -eps, eps)
                losses.append(max((v - ret) ** 2, (v_clipped - ret) ** 2))
                flags.append(1.0 if (v_clipped - ret) ** 2 > (v - ret) ** 2 else 0.0)
    loss, stats = ru.ppo_value_loss(T(values), T(old_values), T(returns), T(mask), eps)
    close(loss, 0.5 * sum(losses) / len(losses))
    close(stats["clipfrac"], sum(flags) / len(flags))


@pytest.mark.parametrize("seed", SEEDS)
def test_explained_variance(seed):
    rng = random.Random(seed)
    mask = ragged_mask(rng, 5, 6, holes=True)
    returns = randn(rng, 5, 6, scale=2.0)
    values = [[r + rng.gauss(0, 1.0) for r in row] for row in returns]
    residual = [[r - v for r, v in zip(rr, vr)] for rr, vr in zip(returns, values)]
    expected = 1 - ref_masked_var(residual, mask) / ref_masked_var(returns, mask)
    close(ru.explained_variance(T(values), T(returns), T(mask)), expected)
    close(ru.explained_variance(T(returns), T(returns), T(mask)), 1.0)  # perfect values


def test_adaptive_kl_controller():
    init, target, horizon = 0.1, 6.0, 1000
    ctl = ru.AdaptiveKLController(init, target, horizon)
    expected = init
    # below target, far below (clipped at -0.2), above, far above (clipped at +0.2), at target
    for kl, n in [(3.0, 64), (0.0, 256), (7.5, 128), (60.0, 100), (6.0, 500), (-5.0, 32)]:
        ctl.update(kl, n)
        error = clip(kl / target - 1, -0.2, 0.2)
        expected *= 1 + error * n / horizon
        assert ctl.value == pytest.approx(expected, rel=1e-12)
    # the clip: a huge KL moves beta by exactly 20% per horizon of steps
    ctl = ru.AdaptiveKLController(1.0, 1.0, 100)
    ctl.update(1e6, 100)
    assert ctl.value == pytest.approx(1.2)
    ctl.update(0.0, 50)
    assert ctl.value == pytest.approx(1.2 * 0.9)
    restored = ru.AdaptiveKLController(0.5, 1.0, 100)
    restored.load_state_dict(ctl.state_dict())
    assert restored.value == ctl.value


def test_fixed_kl_controller():
    ctl = ru.FixedKLController(0.3)
    for kl in (0.0, 100.0, 3.0):
        ctl.update(kl, 1000)
    assert ctl.value == 0.3


@pytest.mark.parametrize("seed", SEEDS)
def test_bce_reward_loss(seed):
    rng = random.Random(seed)
    rewards = randn(rng, 9, scale=3.0)
    labels = [rng.randrange(2) for _ in range(9)]
    terms = [-(y * math.log(sigmoid(r)) + (1 - y) * math.log(sigmoid(-r))) for r, y in zip(rewards, labels)]
    close(ru.bce_reward_loss(T(rewards), torch.tensor(labels)), sum(terms) / len(terms))


@pytest.mark.parametrize("seed", SEEDS)
def test_pairwise_reward_loss(seed):
    rng = random.Random(seed)
    chosen, rejected = randn(rng, 8, scale=3.0), randn(rng, 8, scale=3.0)
    terms = [-math.log(sigmoid(c - r)) for c, r in zip(chosen, rejected)]
    close(ru.pairwise_reward_loss(T(chosen), T(rejected)), sum(terms) / len(terms))
    # only the difference matters
    shifted = ru.pairwise_reward_loss(T(chosen) + 5, T(rejected) + 5)
    close(shifted, sum(terms) / len(terms))


def draw_minibatches(n: int, size: int, epochs: int, seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [mb.tolist() for mb in ru.minibatch_indices(n, size, epochs, generator, torch.device("cpu"))]


@pytest.mark.parametrize("n,size,epochs", [(128, 32, 4), (10, 4, 3), (7, 7, 2), (0, 32, 4)])
def test_minibatch_indices_visit_every_row_once_per_epoch(n, size, epochs):
    """PPO's and DPO's minibatches: each pass a fresh shuffle of 0 .. n-1 cut into pieces of `size` (the last one
    shorter), the same seed the same order, and no minibatch at all when there is nothing to train on (n = 0)."""
    minibatches = draw_minibatches(n, size, epochs, seed=0)
    per_pass = math.ceil(n / size)
    assert len(minibatches) == epochs * per_pass
    assert [len(mb) for mb in minibatches[:per_pass]] == [min(size, n - i * size) for i in range(per_pass)]
    passes = [sum(minibatches[i : i + per_pass], []) for i in range(0, len(minibatches), max(per_pass, 1))]
    assert all(sorted(order) == list(range(n)) for order in passes)
    assert draw_minibatches(n, size, epochs, seed=0) == minibatches
    if n:
        assert len({tuple(order) for order in passes}) > 1  # reshuffled each pass
        assert draw_minibatches(n, size, epochs, seed=1) != minibatches


# ---------------------------------------------------------------------------
# The SFT loss, validation loss, the learning-rate schedule, the optimizer


ROOT = Path(__file__).resolve().parents[1]


def causal_lm_loss_by_loop(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """-1/N sum over counted positions of log softmax(logits[b, t])[labels[b, t+1]], in plain Python."""
    total, count = 0.0, 0
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1] - 1):
            target = int(labels[b, t + 1])
            if target == -100:
                continue
            row = [float(v) for v in logits[b, t]]
            log_z = math.log(sum(math.exp(v) for v in row))
            total -= row[target] - log_z
            count += 1
    return total / count


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_causal_lm_loss_matches_the_formula(seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 6, 5, generator=gen)
    input_ids = torch.randint(0, 5, (3, 6), generator=gen)
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    labels = ru.lm_labels(input_ids, attention_mask)
    assert ru.causal_lm_loss(logits, labels).item() == pytest.approx(causal_lm_loss_by_loop(logits, labels), abs=1e-5)
    counted = int((labels[:, 1:] != -100).sum())
    total = ru.causal_lm_loss(logits, labels, reduction="sum").item()
    assert total / counted == pytest.approx(causal_lm_loss_by_loop(logits, labels), abs=1e-5)


def test_causal_lm_loss_equals_the_transformers_builtin(tiny_lm, tokenizer):
    rows = ru.tokenize_sentences(["the film is a triumph", "dull"], tokenizer, max_length=32)
    input_ids, attention_mask = ru.pad_batch(rows, tokenizer.pad_token_id)
    labels = ru.lm_labels(input_ids, attention_mask)
    with torch.no_grad():
        out = tiny_lm(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    assert ru.causal_lm_loss(out.logits, labels).item() == pytest.approx(out.loss.item(), abs=1e-5)


def test_validation_loss_weighs_every_token_alike_however_batched(tiny_lm, tokenizer, smoke_rows):
    sentences = [row["sentence"] for row in smoke_rows["validation"][:24]]
    rows = ru.tokenize_sentences(sentences, tokenizer, max_length=32)
    by_one = [ru.pad_batch([r], tokenizer.pad_token_id) for r in rows]
    by_eight = [ru.pad_batch(rows[i : i + 8], tokenizer.pad_token_id) for i in range(0, len(rows), 8)]
    # by hand: sum of per-sentence summed losses / number of predicted tokens
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, mask in by_one:
            logits = tiny_lm(input_ids=ids, attention_mask=mask).logits
            total += ru.causal_lm_loss(logits, ru.lm_labels(ids, mask), reduction="sum").item()
            count += ids.shape[1] - 1
    expected = total / count
    tiny_lm.train()
    assert ru.validation_loss(tiny_lm, by_one) == pytest.approx(expected, rel=1e-5)
    assert ru.validation_loss(tiny_lm, by_eight) == pytest.approx(expected, rel=1e-5)
    assert tiny_lm.training, "validation_loss must restore the model's training mode"


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_lr_schedule_warms_up_then_decays(schedule):
    warmup, total = 4, 20
    f = ru.lr_lambda(schedule, warmup, total)
    assert [f(s) for s in range(warmup)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    progress = [(s - warmup) / (total - warmup) for s in range(warmup, total + 1)]
    expected = {
        "cosine": [0.5 * (1 + math.cos(math.pi * p)) for p in progress],
        "linear": [1 - p for p in progress],
        "constant": [1.0 for _ in progress],
    }[schedule]
    assert [f(s) for s in range(warmup, total + 1)] == pytest.approx(expected)
    assert f(total + 50) == pytest.approx(expected[-1]), "past the end the multiplier stays at its final value"


def test_optimizer_decays_matrices_only_and_step_clips(tiny_lm):
    optimizer = ru.make_optimizer(tiny_lm, lr=1e-3, weight_decay=0.1)
    decayed = {id(p) for p in optimizer.param_groups[0]["params"]}
    for name, p in tiny_lm.named_parameters():
        assert (id(p) in decayed) == (p.ndim >= 2), name
    assert optimizer.param_groups[1]["weight_decay"] == 0.0
    ids = torch.randint(0, 100, (2, 8))
    loss = 1e3 * tiny_lm(input_ids=ids, labels=ids).loss  # a large loss: gradients far above the clip
    scaler = ru.resolve_precision(torch.device("cpu"), "fp32").grad_scaler()
    before = [p.detach().clone() for p in tiny_lm.parameters()]
    grad_norm = ru.optimizer_step(loss, optimizer, scaler, tiny_lm.parameters(), max_grad_norm=1.0)
    assert grad_norm.item() > 1.0, "the returned norm is the one before clipping"
    assert all(p.grad is None for p in tiny_lm.parameters()), "gradients are cleared after the step"
    assert any(not torch.equal(a, b) for a, b in zip(before, tiny_lm.parameters())), "the step changed the weights"


# ---------------------------------------------------------------------------
# The reward model's metrics: ROC AUC, pairwise accuracy


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


# ---------------------------------------------------------------------------
# distinct-n


def distinct_n_by_loop(texts: list[str], n: int) -> float:
    """Distinct-n written out from its definition: count every word n-gram of every text, and the different ones."""
    seen, total = set(), 0
    for text in texts:
        words = text.split()
        for start in range(len(words) - n + 1):
            seen.add(tuple(words[start : start + n]))
            total += 1
    return len(seen) / total if total else 0.0


@pytest.mark.parametrize("n", [1, 2, 3])
def test_distinct_n_matches_a_plain_loop(n: int) -> None:
    rng = torch.Generator().manual_seed(n)
    words = ["good", "great", "film", "the", "a", "heart", "fun", "."]
    texts = [
        " ".join(words[i] for i in torch.randint(len(words), (int(k),), generator=rng).tolist())
        for k in torch.randint(0, 9, (60,), generator=rng)
    ]
    assert ru.distinct_n(texts, n) == pytest.approx(distinct_n_by_loop(texts, n), abs=1e-12)


def test_distinct_2_by_hand() -> None:
    # "a great film" -> (a, great), (great, film); "a great heart" -> (a, great), (great, heart): 3 distinct of 4
    assert ru.distinct_n(["a great film", "a great heart"], 2) == pytest.approx(3 / 4)
    assert ru.distinct_n(["great great great great"], 2) == pytest.approx(1 / 3)  # one bigram, three times
    assert ru.distinct_n(["one", ""], 2) == 0.0  # no bigram at all
    assert ru.distinct_n(["a b", "b a"], 2) == 1.0  # n-grams never span two texts


def test_grouped_distinct_n_averages_groups_of_the_same_size() -> None:
    texts = [f"w{i} x" for i in range(5)] + ["a b"] * 5  # group 1: 5 distinct bigrams; group 2: 1 of 5
    assert ru.grouped_distinct_n(texts, 2, group=5) == pytest.approx((1.0 + 0.2) / 2)
    assert ru.grouped_distinct_n(texts + ["c d"], 2, group=5) == pytest.approx(0.6)  # a short last group is dropped
    assert ru.grouped_distinct_n(texts[:3], 2, group=5) == ru.distinct_n(texts[:3], 2)  # fewer than a group: all
    # the point of grouping: 871 varied responses score as 128 of them do, where the plain measure falls with count
    rng = random.Random(0)
    vocabulary = [f"w{i}" for i in range(60)]
    responses = [" ".join(rng.choices(vocabulary, k=6)) for _ in range(871)]
    grouped, first_128 = ru.grouped_distinct_n(responses, 2), ru.distinct_n(responses[:128], 2)
    assert abs(grouped - first_128) < 0.02 < first_128 - ru.distinct_n(responses, 2)


def test_repeats_a_word_by_hand() -> None:
    assert ru.repeats_a_word("and and powerful and family")  # "and" three times
    assert not ru.repeats_a_word("a fine , fine film")  # twice is not three times
    assert ru.repeats_a_word("fine fine", times=2) and not ru.repeats_a_word("")


def test_real_word_share_by_hand() -> None:
    known = ru.known_words(["A fine film .", "it 's the heart"])  # {a, fine, film, it, the, heart}: not "'s", "."
    assert known == {"a", "fine", "film", "it", "the", "heart"}
    # "a fine devives , film": 4 words of letters ("," is not one), 3 known
    assert ru.real_word_share(["A fine devives , film"], known) == pytest.approx(3 / 4)
    assert ru.real_word_share(["", ". ,"], known) == 0.0  # no words at all


def test_response_real_word_share_counts_only_what_the_response_wrote() -> None:
    known = {"a", "fine", "film", "to", "your", "taste"}
    # the prompt's "zorbly" is a person's word the model did not write: it counts for prompt + response only
    assert ru.real_word_share(["zorbly fine film"], known) == pytest.approx(2 / 3)
    assert ru.response_real_word_share(["zorbly fine"], [" film"], known) == 1.0
    # a response that goes on without a space finishes the prompt's last word: "toyour" is the response's word
    assert ru.response_words("a taste to", "your film") == ["toyour", "film"]
    assert ru.response_real_word_share(["a taste to"], ["your film"], known) == pytest.approx(1 / 2)
    assert ru.response_words("a fine", "") == [] and ru.response_real_word_share(["a"], [""], known) == 0.0
    with pytest.raises(ValueError):  # prompts and responses come in pairs
        ru.response_real_word_share(["a", "b"], [" film"], known)


def test_summarise_evaluation_reports_both_real_word_shares() -> None:
    import pandas as pd

    table = pd.DataFrame(
        {
            "prompt": ["zorbly fine", "a"], "response": [" film", " devives film"], "raw_score": [1.0, -1.0],
            "positive": [True, False], "ends_with_eos": [True, True], "kl": [0.1, 0.3], "ref_nll": [2.0, 4.0],
            "length": [1, 2],
        }
    )  # fmt: skip
    summary = ru.summarise_evaluation(table, {"a", "fine", "film"})
    assert summary["real_word_share"] == pytest.approx(4 / 6)  # zorbly fine film a devives film
    assert summary["response_real_word_share"] == pytest.approx(2 / 3)  # film devives film
    assert "real_word_share" not in ru.summarise_evaluation(table)


# ---------------------------------------------------------------------------
# the binomial interval of the curve's points


def test_binomial_interval_matches_wilsons_formula_by_hand() -> None:
    # p = 0.5, n = 128, z = 1.96: centre 0.5; half-width 1.96 sqrt(0.25/128 + 1.96^2/(4 * 128^2)) / (1 + 1.96^2/128)
    half = 1.96 * math.sqrt(0.25 / 128 + 1.96**2 / (4 * 128**2)) / (1 + 1.96**2 / 128)
    assert ru.binomial_interval(0.5, 128) == pytest.approx((0.5 - half, 0.5 + half))
    low, high = ru.binomial_interval(0.0, 128)
    assert low == 0.0 and 0.0 < high < 0.05  # none of 128 positive: still not proof of 0
    for share in [k / 871 for k in range(872)]:  # every share lies inside its own interval, at 0 and 1 too
        low, high = ru.binomial_interval(share, 871)
        assert 0.0 <= low <= share <= high <= 1.0
    with pytest.raises(ValueError, match="n >= 1"):
        ru.binomial_interval(0.5, 0)


def test_binomial_interval_covers_the_true_share_95_percent_of_the_time() -> None:
    generator = torch.Generator().manual_seed(0)
    true_share, n, draws = 0.7, 128, 4000
    shares = torch.bernoulli(torch.full((draws, n), true_share), generator=generator).mean(1).tolist()
    covered = sum(low <= true_share <= high for low, high in (ru.binomial_interval(s, n) for s in shares))
    assert 0.93 < covered / draws < 0.97


# ---------------------------------------------------------------------------
# AdamW with decay on matrices only


def test_make_optimizer_is_plain_adamw_with_decay_on_matrices():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 4))
    twin = copy.deepcopy(model)
    fast = ru.make_optimizer(model, lr=1e-2, weight_decay=0.1)
    if tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 4):
        assert fast.defaults["fused"] is True  # the fused kernel runs on CPU too
    matrices = [p for p in twin.parameters() if p.ndim >= 2]
    others = [p for p in twin.parameters() if p.ndim < 2]
    plain = torch.optim.AdamW(
        [{"params": matrices, "weight_decay": 0.1}, {"params": others, "weight_decay": 0.0}],
        lr=1e-2,
        eps=1e-8,
        foreach=False,
    )
    for _ in range(6):
        x = torch.randn(32, 8)
        for m, opt in ((model, fast), (twin, plain)):
            m(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0)
    assert any(
        (p - q).abs().max() > 0
        for p, q in zip(
            model.parameters(),
            nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 4)).parameters(),
        )
    )
