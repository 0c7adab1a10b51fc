"""The critic-free advantage estimators (RLOO, GRPO, Dr. GRPO, REINFORCE++), the loss aggregations and best-of-n,
each against a plain loop written from its paper's formula; and notebook 3's own loop learning with each of them."""

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import pytest
import torch

import rlhf_utils as ru
from rlhf_support.config import ADVANTAGE_ESTIMATORS, GROUP_ESTIMATORS
from rlhf_support.errors import ConfigError
from rlhf_support.notebook_cells import run_tagged_cell

ROOT = Path(__file__).resolve().parents[1]
K = 4  # samples per prompt


def episode_batch(seed: int, groups: int = 3, k: int = K, length: int = 6):
    """Scores (B,), per-token KL terms (B, T) and prefix response masks (B, T) of random lengths 1..T (one row empty)."""
    g = torch.Generator().manual_seed(seed)
    batch = groups * k
    scores = torch.randn(batch, generator=g) * 2
    kl_terms = torch.randn(batch, length, generator=g) * 0.3
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    lengths[1] = 0  # an empty response: no token to carry the score
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    return scores, kl_terms * mask, mask


def shaped_rewards(scores, kl_terms, mask, beta):
    """r_t = -beta * kl_t, plus the score on the last real token (rows with no token get nothing)."""
    rewards = -beta * kl_terms.clone()
    for i in range(len(scores)):
        n = int(mask[i].sum())
        if n:
            rewards[i, n - 1] += scores[i]
    return rewards


def plain_return(rewards_row, n, t, gamma):
    return sum(gamma ** (u - t) * float(rewards_row[u]) for u in range(t, n))


def plain_group_advantages(scores, kl_terms, mask, beta, gamma, relative_score):
    """From the papers: every token of response i gets its relative score (discounted from the end) plus the
    return of the KL penalties from t on. relative_score(group: list, i) -> float."""
    expected = torch.zeros_like(kl_terms)
    for start in range(0, len(scores), K):
        group = [float(s) for s in scores[start : start + K]]
        for j in range(K):
            i, n = start + j, int(mask[start + j].sum())
            for t in range(n):
                penalty = sum(gamma ** (u - t) * -beta * float(kl_terms[i, u]) for u in range(t, n))
                expected[i, t] = gamma ** (n - 1 - t) * relative_score(group, j) + penalty
    return expected


def rloo_score(group, i):
    return group[i] - sum(s for j, s in enumerate(group) if j != i) / (len(group) - 1)


def grpo_score(group, i, eps=1e-4):
    mean = sum(group) / len(group)
    std = math.sqrt(sum((s - mean) ** 2 for s in group) / (len(group) - 1))  # unbiased, as torch.std
    return (group[i] - mean) / (std + eps)


def dr_grpo_score(group, i):
    return group[i] - sum(group) / len(group)


GROUP_CASES = [
    (ru.rloo_advantages, rloo_score),
    (ru.grpo_advantages, grpo_score),
    (ru.dr_grpo_advantages, dr_grpo_score),
]


@pytest.mark.parametrize("estimator, relative_score", GROUP_CASES, ids=["rloo", "grpo", "dr_grpo"])
@pytest.mark.parametrize("beta, gamma", [(0.0, 1.0), (0.1, 1.0), (0.2, 0.9)])
@pytest.mark.parametrize("seed", [0, 1])
def test_group_estimators_match_the_papers_formulas(estimator, relative_score, beta, gamma, seed):
    scores, kl_terms, mask = episode_batch(seed)
    rewards = shaped_rewards(scores, kl_terms, mask, beta)
    got = estimator(scores, rewards, mask, K, gamma)
    expected = plain_group_advantages(scores, kl_terms, mask, beta, gamma, relative_score)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (got[mask == 0] == 0).all()


def test_the_shaped_rewards_of_the_tests_are_the_notebooks():
    scores, kl_terms, mask = episode_batch(3)
    logprobs = torch.randn(kl_terms.shape, generator=torch.Generator().manual_seed(4)) * mask
    rewards, _ = ru.compute_rewards(scores, logprobs, logprobs - kl_terms, mask, kl_coef=0.1)
    torch.testing.assert_close(rewards, shaped_rewards(scores, kl_terms, mask, 0.1))


def test_without_the_kl_grpo_gives_every_token_the_papers_outcome_advantage():
    """Shao et al. (2024), 4.1.2: A_{i,t} = (r_i - mean(r)) / std(r) for every token t of output i."""
    scores = torch.tensor([1.0, 2.0, 3.0, 6.0])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]])
    rewards = shaped_rewards(scores, torch.zeros(4, 3), mask, 0.0)
    got = ru.grpo_advantages(scores, rewards, mask, 4)
    std = math.sqrt(((scores - 3.0) ** 2).sum().item() / 3)
    for i in range(4):
        n = int(mask[i].sum())
        assert got[i, :n].tolist() == pytest.approx([(scores[i].item() - 3.0) / (std + 1e-4)] * n, rel=1e-6)


def test_rloo_is_the_group_mean_baseline_scaled_by_k_over_k_minus_1():
    """s_i - mean_{j != i} s_j = k / (k - 1) * (s_i - mean_j s_j): RLOO and Dr. GRPO differ by a constant factor."""
    scores, kl_terms, mask = episode_batch(5)
    rewards = shaped_rewards(scores, kl_terms, mask, 0.0)
    rloo, dr = ru.rloo_advantages(scores, rewards, mask, K), ru.dr_grpo_advantages(scores, rewards, mask, K)
    torch.testing.assert_close(rloo, dr * K / (K - 1))
    first_tokens = rloo[:, 0].view(-1, K)[:, [0, 2, 3]]  # row 1 is empty
    assert first_tokens.abs().sum() > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reinforce_pp_whitens_the_returns_over_the_batch(seed):
    scores, kl_terms, mask = episode_batch(seed)
    rewards = shaped_rewards(scores, kl_terms, mask, 0.1)
    got = ru.reinforce_pp_advantages(rewards, mask, gamma=0.95)
    returns = {}
    for i in range(len(scores)):
        n = int(mask[i].sum())
        for t in range(n):
            returns[i, t] = plain_return(rewards[i], n, t, 0.95)
    values = list(returns.values())
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values) + 1e-8)
    for (i, t), g in returns.items():
        assert got[i, t].item() == pytest.approx((g - mean) / std, abs=1e-5)
    assert (got[mask == 0] == 0).all()


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_returns_to_go_are_gae_with_no_critic_and_lambda_one(gamma):
    scores, kl_terms, mask = episode_batch(7)
    rewards = shaped_rewards(scores, kl_terms, mask, 0.1)
    got = ru.returns_to_go(rewards, mask, gamma)
    gae, _ = ru.compute_gae(torch.zeros_like(rewards), rewards, mask, gamma, lam=1.0)
    torch.testing.assert_close(got, gae)
    n = int(mask[0].sum())
    assert got[0, 0].item() == pytest.approx(plain_return(rewards[0], n, 0, gamma), abs=1e-6)


def test_compute_advantages_picks_each_estimator():
    scores, kl_terms, mask = episode_batch(8)
    rewards = shaped_rewards(scores, kl_terms, mask, 0.1)
    values = torch.randn(rewards.shape, generator=torch.Generator().manual_seed(9)) * mask
    gae, gae_returns = ru.compute_gae(values, rewards, mask, 1.0, 0.95)
    advantages, returns = ru.compute_advantages("gae", scores, rewards, values, mask, 1.0, 0.95, 1, True)
    torch.testing.assert_close(advantages, ru.masked_whiten(gae, mask))
    torch.testing.assert_close(returns, gae_returns)
    advantages, _ = ru.compute_advantages("gae", scores, rewards, values, mask, 1.0, 0.95, 1, False)
    torch.testing.assert_close(advantages, gae)
    for name, fn in [("rloo", ru.rloo_advantages), ("grpo", ru.grpo_advantages), ("dr_grpo", ru.dr_grpo_advantages)]:
        advantages, returns = ru.compute_advantages(name, scores, rewards, values, mask, 1.0, 0.95, K, True)
        torch.testing.assert_close(advantages, fn(scores, rewards, mask, K))  # the critic's values play no part
        torch.testing.assert_close(returns, ru.returns_to_go(rewards, mask, 1.0))
    advantages, _ = ru.compute_advantages("reinforce_pp", scores, rewards, values, mask, 1.0, 0.95, 1, False)
    torch.testing.assert_close(advantages, ru.reinforce_pp_advantages(rewards, mask))
    with pytest.raises(ValueError, match="use one of"):
        ru.compute_advantages("ppo", scores, rewards, values, mask, 1.0, 0.95, 1, True)


def test_a_batch_that_is_not_whole_groups_is_refused():
    scores, kl_terms, mask = episode_batch(0)
    with pytest.raises(ValueError, match="samples_per_prompt=5"):
        ru.grpo_advantages(scores, kl_terms, mask, 5)
    with pytest.raises(ValueError, match="k >= 2"):
        ru.rloo_advantages(scores, kl_terms, mask, 1)


# ---------------------------------------------------------------------------
# How the policy loss averages over tokens


def test_the_three_loss_aggregations_against_plain_loops():
    per_token = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    assert ru.aggregate_loss(per_token, mask, "token").item() == pytest.approx((1 + 2 + 3 + 4) / 4)
    assert ru.aggregate_loss(per_token, mask, "sequence").item() == pytest.approx((2.0 + 4.0) / 2)
    assert ru.aggregate_loss(per_token, mask, "constant", max_tokens=5).item() == pytest.approx(10 / (2 * 5))
    with pytest.raises(ValueError, match="max_tokens"):
        ru.aggregate_loss(per_token, mask, "constant")
    with pytest.raises(ValueError, match="'token', 'sequence' or 'constant'"):
        ru.aggregate_loss(per_token, mask, "mean")


def test_grpo_weights_a_short_responses_tokens_more_and_dr_grpo_does_not():
    """The length bias Liu et al. (2025) remove: under GRPO's per-response mean, the gradient on one token of a
    1-token response is 3 times that on one token of a 3-token response; under Dr. GRPO's constant they are equal."""
    old = torch.zeros(2, 3)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    advantages = torch.ones(2, 3) * mask
    grads = {}
    for how in ("sequence", "constant"):
        logprobs = torch.zeros(2, 3, requires_grad=True)
        loss, _ = ru.clipped_policy_loss(logprobs, old, advantages, mask, 0.2, how, max_tokens=3)
        loss.backward()
        grads[how] = logprobs.grad
    assert grads["sequence"][1, 0].item() == pytest.approx(3 * grads["sequence"][0, 0].item())
    assert grads["constant"][1, 0].item() == pytest.approx(grads["constant"][0, 0].item())
    assert set(ru.LOSS_AGGREGATION) == set(ADVANTAGE_ESTIMATORS)


# ---------------------------------------------------------------------------
# Settings, prompts in groups, the health table without a critic


def test_the_group_estimators_ask_for_groups_and_whole_batches():
    for name in GROUP_ESTIMATORS:
        with pytest.raises(ConfigError, match="samples_per_prompt to 2 or more"):
            ru.PPOConfig(advantage_estimator=name)
        assert ru.PPOConfig(advantage_estimator=name, samples_per_prompt=4).samples_per_prompt == 4
    with pytest.raises(ConfigError, match="multiple of samples_per_prompt=3"):
        ru.PPOConfig(batch_size=256, samples_per_prompt=3)
    with pytest.raises(ConfigError, match="use one of"):
        ru.PPOConfig(advantage_estimator="ppo")
    ru.PPOConfig(advantage_estimator="reinforce_pp")  # needs no groups


def test_prompts_come_in_groups_of_k_rows_and_k_1_draws_as_before():
    prompts = [[i + 1] * (1 + i % 3) for i in range(50)]
    ids, mask = ru.sample_prompts(prompts, 12, 0, torch.Generator().manual_seed(0), torch.device("cpu"), 4)
    assert ids.shape[0] == 12
    for g in range(3):
        assert all(torch.equal(ids[4 * g], ids[4 * g + j]) for j in range(4))
    assert len({tuple(ids[4 * g].tolist()) for g in range(3)}) > 1
    one, _ = ru.sample_prompts(prompts, 12, 0, torch.Generator().manual_seed(0), torch.device("cpu"))
    picks = torch.randint(50, (12,), generator=torch.Generator().manual_seed(0)).tolist()
    assert [row[row > 0].tolist() for row in one] == [prompts[i] for i in picks]


def test_the_health_table_has_no_value_rows_without_a_critic():
    history = ru.History()
    for i in range(1, 9):
        history.log(i, **{"objective/kl": 1.0, "policy/entropy": 2.0, "value/explained_variance": 0.0})
    assert "value/explained_variance" in ru.ppo_health_table(history, ru.PPOConfig(adaptive_kl=False)).index
    table = ru.ppo_health_table(
        history, ru.PPOConfig(advantage_estimator="grpo", samples_per_prompt=4, adaptive_kl=False)
    )
    assert "value/explained_variance" not in table.index and table.attrs["verdict"] == "healthy"


# ---------------------------------------------------------------------------
# Best-of-n


@pytest.mark.parametrize("n", [1, 2, 4, 16])
def test_best_of_n_kl_matches_the_exact_kl_of_picking_the_best_of_n_uniform_draws(n):
    """Over M equally likely outcomes with distinct rewards, best-of-n picks rank i with probability
    (i/M)^n - ((i-1)/M)^n; its KL to the uniform reference tends to log n - (n-1)/n as M grows."""
    m = 200_000
    ranks = torch.arange(1, m + 1, dtype=torch.float64)
    p = (ranks / m) ** n - ((ranks - 1) / m) ** n
    exact = float((p[p > 0] * torch.log(p[p > 0] * m)).sum())
    assert ru.best_of_n_kl(n) == pytest.approx(exact, abs=1e-3)


def test_best_of_n_keeps_the_highest_scoring_sample_of_each_prompt():
    pd = pytest.importorskip("pandas")

    def table(raw, texts):
        return pd.DataFrame({
            "prompt": ["a", "b", "c"], "response": texts, "raw_score": raw, "positive": [r > 0 for r in raw],
            "judge_score": [0.5, -0.5, 0.1], "judge_positive": [True, False, True], "ends_with_eos": [True] * 3,
            "kl": [0.0] * 3, "ref_nll": [3.0] * 3, "length": [3] * 3,
        })  # fmt: skip

    tables = [table([1.0, -2.0, 0.5], ["x1", "y1", "z1"]), table([0.0, 3.0, 0.7], ["x2", "y2", "z2"])]
    summary, chosen = ru.best_of_n(tables, 2)
    assert chosen["response"].tolist() == ["x1", "y2", "z2"]
    assert summary["positive_share"] == 1.0 and summary["kl_to_ref"] == pytest.approx(math.log(2) - 0.5)
    summary_1, chosen_1 = ru.best_of_n(tables, 1)
    assert chosen_1["response"].tolist() == ["x1", "y1", "z1"] and summary_1["kl_to_ref"] == 0.0


# ---------------------------------------------------------------------------
# Notebook 3's own loop learns with each critic-free estimator (the toy reward of test_ppo.py)


@pytest.mark.parametrize("estimator", ["rloo", "grpo", "dr_grpo", "reinforce_pp"])
def test_the_notebooks_loop_raises_a_toy_reward_with_each_critic_free_estimator(estimator, smoke_dirs, tokenizer,
                                                                                smoke_rows):  # fmt: skip
    from test_ppo import ShareOfSet, token_prompts

    seed, iterations, batch = 0, 30, 32
    torch.manual_seed(seed)
    base = str(smoke_dirs["base"])
    policy = ru.PolicyWithValueHead(ru.load_causal_lm(base))
    ref_policy = ru.load_causal_lm(base).eval().requires_grad_(False)
    in_set = torch.zeros(len(tokenizer), dtype=torch.bool)
    in_set[torch.randperm(len(tokenizer), generator=torch.Generator().manual_seed(123))[:64]] = True
    sentences = [r["sentence"] for r in smoke_rows["train"][:400]]
    prompts = token_prompts(sentences, tokenizer)
    k = 1 if estimator == "reinforce_pp" else K
    cfg = ru.PPOConfig(
        batch_size=batch, minibatch_size=16, ppo_epochs=2, response_length=10, require_cuda=False,
        missing_eos_penalty=0.0, curve_prompts=0, samples_every=10**9, checkpoint_every=0,
        checkpoint_minutes=0, checkpoint_dir=str(smoke_dirs["base"].parent / "unused-checkpoint"),
        advantage_estimator=estimator, samples_per_prompt=k, num_iterations=iterations,
    )  # fmt: skip
    cpu = torch.device("cpu")
    namespace = dict(
        ru=ru, torch=torch, time=time, display=lambda *args, **kwargs: None, device=cpu,
        precision=ru.resolve_precision(cpu, "fp32"), tokenizer=tokenizer, train_prompts=prompts, policy=policy,
        ref_policy=ref_policy, reward_model=ShareOfSet(in_set), score_mean=0.0, score_std=0.1, reward_threshold=0.5,
        optimizer=ru.make_optimizer(policy, lr=2e-3), scaler=ru.resolve_precision(cpu, "fp32").grad_scaler(),
        kl_controller=ru.FixedKLController(0.05), generator=torch.Generator().manual_seed(seed),
        history=ru.History(), run_signature={}, cfg=cfg, start_iteration=0, pieces=ru.ppo_pieces(cfg),
    )  # fmt: skip
    run_tagged_cell(ROOT / "3-RLHF.ipynb", "ppo-loop", namespace)
    scores = namespace["history"].series("env/raw_score_mean")[1]
    first, last = sum(scores[:5]) / 5, sum(scores[-5:]) / 5
    assert len(scores) == iterations
    print(f"{estimator}: score {first:.3f} -> {last:.3f}")
    assert last > first + 0.08 and last > 1.8 * first, f"{estimator}: score {first:.3f} -> {last:.3f}"
    # no critic: the value head got no gradient, so it is still the zeros it started as
    assert all((p == 0).all() for p in policy.value_head.parameters())


def test_the_loop_trains_the_value_head_with_gae(smoke_dirs, tokenizer, smoke_rows, tmp_path):
    """The other side of the check above: with the critic, the same loop moves the value head."""
    from test_ppo import ShareOfSet, token_prompts

    base = str(smoke_dirs["base"])
    policy = ru.PolicyWithValueHead(ru.load_causal_lm(base))
    in_set = torch.zeros(len(tokenizer), dtype=torch.bool)
    in_set[:64] = True
    prompts = token_prompts([r["sentence"] for r in smoke_rows["train"][:100]], tokenizer)
    cfg = ru.PPOConfig(batch_size=16, minibatch_size=16, ppo_epochs=1, response_length=6, require_cuda=False,
                       curve_prompts=0, samples_every=10**9, checkpoint_every=0, checkpoint_minutes=0,
                       num_iterations=2, normalize_scores=False, checkpoint_dir=str(tmp_path / "checkpoint"))  # fmt: skip
    cpu = torch.device("cpu")
    namespace = dict(
        ru=ru, torch=torch, display=lambda *a, **k: None, device=cpu, precision=ru.resolve_precision(cpu, "fp32"),
        tokenizer=tokenizer, train_prompts=prompts, policy=policy, ref_policy=ru.load_causal_lm(base).eval(),
        reward_model=ShareOfSet(in_set), score_mean=0.0, score_std=1.0, reward_threshold=0.5,
        optimizer=ru.make_optimizer(policy, lr=1e-3), scaler=ru.resolve_precision(cpu, "fp32").grad_scaler(),
        kl_controller=ru.FixedKLController(0.05), generator=torch.Generator().manual_seed(0), history=ru.History(),
        run_signature={}, cfg=dataclasses.replace(cfg), start_iteration=0, pieces=ru.ppo_pieces(cfg),
    )  # fmt: skip
    run_tagged_cell(ROOT / "3-RLHF.ipynb", "ppo-loop", namespace)
    assert any((p != 0).any() for p in policy.value_head.parameters())


# ---------------------------------------------------------------------------
# The comparison script: notebook 3 top to bottom with each estimator (smoke profile), best-of-N, the table and plot


def test_the_comparison_runs_notebook_3_with_each_estimator_and_dpo_in_the_smoke_profile(tmp_path):
    pytest.importorskip("nbclient")
    from benchmarks import compare_estimators

    steps = ["RLHF_NUM_ITERATIONS=3", "RLHF_EVAL_PROMPTS=16", "RLHF_CURVE_PROMPTS=8", "RLHF_MAX_TRAIN_SAMPLES=400",
             "RLHF_NUM_EPOCHS=1", "RLHF_COMPARE_LOSSES=0", "RLHF_NORM_SAMPLES=64", "RLHF_LABEL_PAIRS=8",
             "RLHF_SIMULATED_PAIRS=320", "RLHF_DPO_BATCH_SIZE=16"]  # fmt: skip
    argv = ["--profile", "smoke", "--output-dir", str(tmp_path / "out"), "--learning-rates", "1e-3,2e-3",
            "--seeds", "0,1", "--best-of", "2", "--runs-dir", str(tmp_path / "runs"), "--json",
            str(tmp_path / "r.json"), "--table", str(tmp_path / "t.md"), "--figure", str(tmp_path / "f.png"),
            "--methods", ",".join(compare_estimators.METHODS), "--dpo-betas", "0.1", "--dpo-learning-rates",
            "1e-3,2e-3", "--dpo-online-rounds", "2", "--episodes", str(3 * 64)]  # fmt: skip
    for step in steps:
        argv += ["--set", step]
    environment = dict(os.environ)
    results = compare_estimators.main(argv)
    assert dict(os.environ) == environment  # the settings went to the kernels, not into this process
    runs = results["ppo"]
    args = compare_estimators.parse_args(argv)
    kept = compare_estimators.kept_settings(results, args)
    assert len(runs) == len(compare_estimators.METHODS) * 3  # two settings at seed 0, the kept one at seed 1
    for name, run in runs.items():
        method = name.split("/")[0]
        assert run["episodes"] == 3 * 64  # one budget of sampled responses for every method, DPO's pairs included
        if method in compare_estimators.DPO_METHODS:
            assert run["dpo_rounds"] == (1 if method == "dpo_offline" else 2) and run["verdict"] == "-"
            assert 0 <= run["implicit_reward_agreement"] <= 1
        else:
            assert run["estimator"] == method
            assert run["samples_per_prompt"] == (4 if method in GROUP_ESTIMATORS else 1)
            assert run["value_head_trained"] == (method == "gae"), name  # the value loss is off without a critic
            # the rows behind a verdict travel with it, so the table can say what warned
            assert (run["verdict"] == "healthy") == (run["unhealthy_rows"] == []), name
            assert compare_estimators.verdict_text(run) in (tmp_path / "t.md").read_text()
        assert all(math.isfinite(run["policy"][k]) for k in ("judge_positive_share", "kl_to_ref", "distinct_2"))
        assert run["peak_rss_mb"] > 100 and run["loop_s"] > 0
        ppo_of_seed = next(r for n, r in runs.items() if n.startswith("gae/") and r["seed"] == run["seed"])
        assert run["sft"] == ppo_of_seed["sft"]  # one SFT model, the same prompts (whichever rate PPO kept)
    for method in compare_estimators.METHODS:
        settings = compare_estimators.settings_of(method, args)
        objectives = {s: compare_estimators.objective(runs[f"{method}/{s}/seed=0"]) for s in settings}
        assert kept[method] == max(objectives, key=objectives.get)
    best = results["best_of_n"]["0"]["by_n"]
    assert best["1"]["positive_share"] == pytest.approx(runs["gae/lr=0.001/seed=0"]["sft"]["positive_share"])
    assert best["2"]["raw_score_mean"] >= best["1"]["raw_score_mean"]  # the best of two is never worse
    assert best["2"]["kl_to_ref"] == pytest.approx(math.log(2) - 0.5)
    table = (tmp_path / "t.md").read_text()
    assert (
        all(compare_estimators.LABELS[m] in table for m in compare_estimators.METHODS) and "best-of-N, N = 2" in table
    )
    assert (tmp_path / "f.png").stat().st_size > 10_000


def test_the_frontier_marks_a_notebooks_own_run_in_black_with_an_arrow_from_its_sft_point() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks import compare_estimators

    results = json.loads((ROOT / "benchmarks/results/earlier_model/estimators_cpu.json").read_text())
    this_run = {"SFT": {"kl_to_ref": 0.0, "judge_positive_share": 0.40},
                "PPO": {"kl_to_ref": 3.5, "judge_positive_share": 0.70}}  # fmt: skip
    fig = compare_estimators.frontier_figure(results, this_run=this_run)
    ax = fig.axes[0]
    black = {line.get_label(): (line.get_xdata()[0], line.get_ydata()[0]) for line in ax.lines
             if line.get_color() == "black"}  # fmt: skip
    assert black == {"this notebook: SFT": (0.0, 40.0), "this notebook: PPO": (3.5, 70.0)}
    arrows = [a for a in ax.texts if getattr(a, "arrow_patch", None) is not None]
    assert [(a.xy, a.xyann) for a in arrows] == [((3.5, 70.0), (0.0, 40.0))]  # from its own SFT point to PPO
    plt.close(fig)
    fig = compare_estimators.frontier_figure(results)  # the script's figure: no notebook run unless it is saved
    assert not any(line.get_label().startswith("this notebook") for line in fig.axes[0].lines)
    plt.close(fig)


def test_the_scripts_plot_marks_notebook_3s_saved_run_the_same_way(tmp_path) -> None:
    from benchmarks import compare_estimators

    args = compare_estimators.parse_args(["--notebook-run", str(tmp_path / "policy")])
    assert compare_estimators.committed_run(args) is None  # not saved: nothing to mark
    (tmp_path / "policy").mkdir()
    meta = {"kl_to_ref": 3.78, "judge_positive_share": 0.706}
    (tmp_path / "policy/checkpoint.json").write_text(json.dumps({"meta": {"eval": meta}}))
    assert compare_estimators.committed_run(args) == {"PPO": meta}


def test_report_mode_redraws_a_saved_comparison_with_the_methods_it_ran(tmp_path) -> None:
    """--report reads which methods and settings the saved run used (here the earlier model's five estimators, no DPO),
    not this command's defaults, and writes the table and plot where this command says."""
    from benchmarks import compare_estimators

    saved = ROOT / "benchmarks/results/earlier_model/estimators_cpu.json"
    table, figure = tmp_path / "t.md", tmp_path / "f.png"
    compare_estimators.main(["--report", "--json", str(saved), "--table", str(table), "--figure", str(figure),
                             "--notebook-run", ""])  # fmt: skip
    text = table.read_text()
    assert all(
        f"| {compare_estimators.LABELS[m]} |" in text for m in ("gae", "rloo", "grpo", "dr_grpo", "reinforce_pp")
    )
    assert "DPO" not in text and figure.stat().st_size > 10_000


def test_a_tuning_run_far_to_the_right_is_drawn_at_the_edge_with_its_kl(tmp_path) -> None:
    """One collapsed tuning run (online DPO reached KL 26.5 here) must not squash every other point into a corner: the
    axis ends a little past the kept runs, best-of-N and the notebook's run, and the far run is an arrow naming its KL."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks import compare_estimators

    results = json.loads((ROOT / "benchmarks/results/earlier_model/estimators_cpu.json").read_text())
    results["ppo"]["grpo/lr=0.0003/seed=0"]["policy"]["kl_to_ref"] = 50.0  # a setting GRPO did not keep
    fig = compare_estimators.frontier_figure(results)
    ax = fig.axes[0]
    assert ax.get_xlim()[1] < 12 and [t.get_text() for t in ax.texts if t.get_text().startswith("KL ")] == ["KL 50.0"]
    plt.close(fig)


def test_the_kl_labels_at_the_edge_never_overlap() -> None:
    """Two tuning runs far to the right at nearly the same share (REINFORCE++ at 7.5e-5 and 1.5e-4: 69.1% and 69.0%)
    printed their KLs on top of each other; each label now sits at least a label's height above the one below."""
    import itertools

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks import compare_estimators

    fig = compare_estimators.frontier_figure(json.loads((ROOT / "benchmarks/results/estimators_cpu.json").read_text()))
    fig.canvas.draw()
    labels = [t for t in fig.axes[0].texts if t.get_text().startswith("KL ")]
    boxes = [t.get_window_extent() for t in labels]
    assert len(labels) >= 10 and "KL 26.5" in {t.get_text() for t in labels}  # online DPO's collapse is among them
    overlapping = [(a.get_text(), b.get_text()) for (a, x), (b, y) in itertools.combinations(zip(labels, boxes), 2)
                   if x.overlaps(y)]  # fmt: skip
    assert not overlapping
    top = fig.axes[0].get_ylim()[1]
    assert all(t.xy[1] < top for t in labels)  # and all inside the axes
    plt.close(fig)


def test_the_committed_comparison_table_is_what_its_json_gives_and_what_the_docs_quote(tmp_path) -> None:
    """benchmarks/results/estimators_cpu.md (notebook 3's section 8.4 shows it) and the table in docs/results.md are
    the report of the committed JSON, so no figure in them can drift from the runs behind it."""
    from benchmarks import compare_estimators

    saved = ROOT / "benchmarks/results/estimators_cpu.json"
    table, figure = tmp_path / "t.md", tmp_path / "f.png"
    compare_estimators.main(["--report", "--json", str(saved), "--table", str(table), "--figure", str(figure),
                             "--notebook-run", ""])  # fmt: skip
    text = table.read_text()
    assert text == (ROOT / "benchmarks/results/estimators_cpu.md").read_text()
    assert all(f"| {compare_estimators.LABELS[m]} |" in text for m in compare_estimators.METHODS)
    assert text.split("\n\nTuning")[0].strip() in (ROOT / "docs/results.md").read_text()
