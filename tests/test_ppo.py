"""Learning: a reward model learns the smoke sentiment, PPO (notebook 3's own loop) raises a toy reward within a
KL budget, the health table reads a run, and the independent judge."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import rlhf_utils as ru
from rlhf_support.notebook_cells import run_tagged_cell

# ---------------------------------------------------------------------------
# The health table


SWEEPS = {  # the earlier cpu model's beta sweep and the current model's (tests/data: each file says which runs)
    model: json.loads((Path(__file__).parent / "data" / name).read_text())["runs"]
    for model, name in (("earlier", "sweep_histories.json"), ("current", "sweep_histories_current.json"))
}


def sweep_run(beta: str, model: str = "current") -> tuple[ru.History, ru.PPOConfig]:
    """A measured cpu-profile run of notebook 3 at a fixed beta: its history, and its settings."""
    run = SWEEPS[model][beta]
    cfg = ru.make_config(ru.PPOConfig, {"RLHF_PROFILE": "cpu"}, init_kl_coef=run["init_kl_coef"])
    return ru.History([dict(row) for row in run["rows"]]), cfg


@pytest.mark.parametrize(
    ("model", "beta", "verdict"),
    [("earlier", "0.12", "healthy"), ("earlier", "0.03", "warned"), ("earlier", "0.005", "broken")]
    + [("current", "0.12", "healthy"), ("current", "0.03", "warned"), ("current", "0.005", "broken")]
    + [("current", "0", "broken")],
)
def test_the_health_table_reads_the_measured_sweep_runs_right(model: str, beta: str, verdict: str) -> None:
    history, cfg = sweep_run(beta, model)
    assert not cfg.adaptive_kl  # the cpu profile's fixed beta: the KL bands must hold without a target
    assert ru.ppo_run_verdict(history, cfg) == verdict


@pytest.mark.parametrize("model", ["earlier", "current"])
def test_the_collapsed_run_breaks_on_the_kl_and_the_repeats_not_on_the_update_metrics(model: str) -> None:
    table = ru.ppo_health_table(*sweep_run("0.005", model))
    assert table.loc["objective/kl", "verdict"] == "broken" and table.loc["curve/repeat_share", "verdict"] == "broken"
    assert "repetition" in table.loc["curve/repeat_share", "reading"]
    # the update looked fine: the metrics of PPO practice alone would have passed this run
    assert {table.loc[m, "verdict"] for m in ("policy/clipfrac", "policy/approx_kl", "policy/grad_norm")} == {"healthy"}


def test_the_health_table_flags_each_side_of_a_band() -> None:
    history = ru.History()
    for step in range(1, 21):
        history.log(
            step,
            **{
                "policy/clipfrac": 0.1,
                "policy/approx_kl": 0.2 if step > 10 else 0.01,  # mean 0.105: above 0.05, not beyond 0.2
                "value/explained_variance": step / 20,  # last quarter 0.9
                "policy/entropy": 2.0 - step * 0.09,  # last quarter 0.29 / first 1.91 = 0.15: collapsed
                "objective/kl": 6.0,
                "env/response_length": 8.0,
                "policy/grad_norm": 5.0,  # 5x the clip: a warning, never broken
            },
        )
    cfg = ru.make_config(ru.PPOConfig, {}, kl_target=6.0)
    table = ru.ppo_health_table(history, cfg)
    verdicts = table["verdict"].to_dict()
    assert verdicts["policy/clipfrac"] == verdicts["value/explained_variance"] == "healthy"
    assert verdicts["policy/approx_kl"] == "warning" and table.loc["policy/approx_kl", "reading"].startswith(
        "each epoch"
    )
    assert verdicts["policy/entropy"] == "broken" and "narrowed" in table.loc["policy/entropy", "reading"]
    assert verdicts["policy/grad_norm"] == "warning"
    assert verdicts["objective/kl vs kl_target"] == "healthy"  # the adaptive controller's row: at its target
    assert "curve/distinct_2" not in verdicts  # no curve in this history: no diversity rows
    assert table.attrs["verdict"] == "broken"
    fixed = ru.ppo_health_table(history, ru.make_config(ru.PPOConfig, {}, adaptive_kl=False))
    assert "objective/kl vs kl_target" not in fixed.index and "objective/kl" in fixed.index


# ---------------------------------------------------------------------------
# A reward model learns; PPO raises a toy reward within a KL budget


ROOT = Path(__file__).resolve().parents[1]


RM_STEPS, RM_BATCH, RM_LR, RM_THRESHOLD = 150, 16, 2e-3, 0.75


def batch_of(tokenizer, sentences):
    """Sentences + EOS, right padded: the reward is read at the EOS."""
    return ru.pad_batch(ru.tokenize_sentences(sentences, tokenizer, max_length=32), tokenizer.pad_token_id)


def train_reward_model(smoke_dirs, tokenizer, rows, seed, loss_name):
    torch.manual_seed(seed)
    model = ru.build_reward_model(str(smoke_dirs["base"])).train()
    optimizer = ru.make_optimizer(model, RM_LR)
    scaler = ru.resolve_precision(torch.device("cpu"), "fp32").grad_scaler()
    rng = random.Random(seed)
    pairs = ru.make_preference_pairs([r["label"] for r in rows], seed=seed)
    for _ in range(RM_STEPS):
        if loss_name == "bce":
            batch = rng.sample(rows, RM_BATCH)
            scores = model.score(*batch_of(tokenizer, [r["sentence"] for r in batch]))
            loss = ru.bce_reward_loss(scores, torch.tensor([r["label"] for r in batch]))
        else:
            mb_pairs = rng.sample(pairs, RM_BATCH // 2)
            sentences = [rows[c]["sentence"] for c, _ in mb_pairs] + [rows[r]["sentence"] for _, r in mb_pairs]
            scores = model.score(*batch_of(tokenizer, sentences))
            loss = ru.pairwise_reward_loss(scores[: RM_BATCH // 2], scores[RM_BATCH // 2 :])
        ru.stop_if_diverged("reward model", 0, loss=loss.item())
        ru.optimizer_step(loss, optimizer, scaler, model.parameters(), max_grad_norm=1.0)
    return model.eval()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reward_model_learns_with_bce(smoke_dirs, tokenizer, smoke_rows, seed):
    model = train_reward_model(smoke_dirs, tokenizer, smoke_rows["train"], seed, "bce")
    held_out = smoke_rows["validation"]
    with torch.no_grad():
        scores = model.score(*batch_of(tokenizer, [r["sentence"] for r in held_out]))
    labels = torch.tensor([r["label"] for r in held_out])
    accuracy = ((scores > 0).long() == labels).float().mean().item()
    print(f"seed {seed}: BCE held-out accuracy {accuracy:.3f}")  # shown with pytest -s
    assert accuracy >= RM_THRESHOLD, f"held-out accuracy {accuracy:.3f}"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reward_model_learns_with_pairwise_loss(smoke_dirs, tokenizer, smoke_rows, seed):
    model = train_reward_model(smoke_dirs, tokenizer, smoke_rows["train"], seed, "pairwise")
    held_out = smoke_rows["validation"]
    pairs = ru.make_preference_pairs([r["label"] for r in held_out], seed=0)
    with torch.no_grad():
        chosen = model.score(*batch_of(tokenizer, [held_out[c]["sentence"] for c, _ in pairs]))
        rejected = model.score(*batch_of(tokenizer, [held_out[r]["sentence"] for _, r in pairs]))
    accuracy = (chosen > rejected).float().mean().item()
    print(f"seed {seed}: pairwise held-out pair accuracy {accuracy:.3f}")
    assert accuracy >= RM_THRESHOLD, f"held-out pair accuracy {accuracy:.3f}"


PPO_ITERATIONS, PPO_BATCH, PPO_MINIBATCH, PPO_EPOCHS, RESPONSE_LENGTH = 50, 32, 16, 2, 10


PROMPT_TOKENS, KL_EVERY = 4, 5  # every prompt 4 tokens long; the exact KL measured every 5 iterations


def token_prompts(sentences: list[str], tokenizer) -> list[list[int]]:  # noqa: ANN001
    """Each sentence's first PROMPT_TOKENS tokens (the toy reward below reads the response from that column on)."""
    rows = ru.tokenize_sentences(sentences, tokenizer, max_length=10_000, add_eos=False)
    return [ids[:PROMPT_TOKENS] for ids in rows if len(ids) > PROMPT_TOKENS]


def bernoulli_kl(p: float, q: float) -> float:
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def kl_budget(p0: float, beta: float, length: float) -> float:
    """KL per response of the policy that maximises score - beta * KL for the share-of-S score."""
    tilt = math.exp(1.0 / (length * beta))
    p_star = p0 * tilt / (p0 * tilt + 1 - p0)
    return length * bernoulli_kl(p_star, p0)


class ShareOfSet(torch.nn.Module):
    """A toy reward model: the share of a response's tokens that are in the set S. Every prompt here is PROMPT_TOKENS
    long, so the response of prompt + response starts there."""

    def __init__(self, in_set: torch.Tensor):
        super().__init__()
        self.in_set = in_set

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        response, mask = input_ids[:, PROMPT_TOKENS:], attention_mask[:, PROMPT_TOKENS:]  # (B, R)
        return ru.masked_mean(self.in_set[response].float(), mask, dim=1)  # (B,)


@torch.no_grad()
def exact_kl_and_share(policy, ref_policy, probe_ids, probe_mask, in_set, eos, pad, seed) -> tuple[float, float, float]:
    """On a fixed probe batch: the exact KL of the whole next-token distributions summed over each sampled response
    (mean over the batch), the reference's probability of S per token, and the mean response length."""
    responses, response_mask = ru.generate(policy.lm, probe_ids, probe_mask, RESPONSE_LENGTH, eos, pad,
                                           generator=torch.Generator().manual_seed(seed))  # fmt: skip
    input_ids, attention_mask = torch.cat([probe_ids, responses], 1), torch.cat([probe_mask, response_mask], 1)
    positions = ru.positions_from_mask(attention_mask)
    P = probe_ids.shape[1]
    logits = policy.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits[:, P - 1 : -1]
    ref_logits = ref_policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits
    logp, logq = F.log_softmax(logits, -1), F.log_softmax(ref_logits[:, P - 1 : -1], -1)
    kl = ((logp.exp() * (logp - logq)).sum(-1) * response_mask).sum(1).mean().item()
    p0 = ((logq.exp() * in_set).sum(-1) * response_mask).sum().item() / response_mask.sum().item()
    return kl, p0, response_mask.sum(1).float().mean().item()


def test_ppo_raises_a_toy_reward_within_a_kl_budget(smoke_dirs, tokenizer, smoke_rows):
    """Notebook 3's own PPO loop (its cell tagged "ppo-loop"), on the tiny smoke model and the toy reward."""
    seed = 0
    torch.manual_seed(seed)
    base = str(smoke_dirs["base"])
    policy = ru.PolicyWithValueHead(ru.load_causal_lm(base))
    ref_policy = ru.load_causal_lm(base).eval().requires_grad_(False)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    in_set = torch.zeros(len(tokenizer), dtype=torch.bool)
    in_set[torch.randperm(len(tokenizer), generator=torch.Generator().manual_seed(123))[:64]] = True
    sentences = [r["sentence"] for r in smoke_rows["train"][:400]]
    prompts = token_prompts(sentences, tokenizer)
    probe_ids, probe_mask = ru.pad_batch(prompts[:PPO_BATCH], pad, side="left")
    cfg = ru.PPOConfig(
        batch_size=PPO_BATCH, minibatch_size=PPO_MINIBATCH, ppo_epochs=PPO_EPOCHS, response_length=RESPONSE_LENGTH,
        require_cuda=False, normalize_scores=False, missing_eos_penalty=0.0, curve_prompts=0, samples_every=10**9,
        checkpoint_every=0, checkpoint_minutes=0, checkpoint_dir=str(smoke_dirs["base"].parent / "unused-checkpoint"),
    )  # fmt: skip
    namespace = dict(
        ru=ru, torch=torch, time=time, display=lambda *args, **kwargs: None, device=torch.device("cpu"),
        precision=ru.resolve_precision(torch.device("cpu"), "fp32"), tokenizer=tokenizer, train_prompts=prompts,
        policy=policy, ref_policy=ref_policy, reward_model=ShareOfSet(in_set), score_mean=0.0, score_std=1.0,
        reward_threshold=0.5, optimizer=ru.make_optimizer(policy, lr=2e-3),
        scaler=ru.resolve_precision(torch.device("cpu"), "fp32").grad_scaler(),
        kl_controller=ru.AdaptiveKLController(0.05, target=4.0, horizon=1000),
        generator=torch.Generator().manual_seed(seed), history=ru.History(), run_signature={},
        pieces=ru.ppo_pieces(cfg),
    )  # fmt: skip
    kl_0, p0, length = exact_kl_and_share(policy, ref_policy, probe_ids, probe_mask, in_set, eos, pad, seed)
    kls = [kl_0]
    for start in range(0, PPO_ITERATIONS, KL_EVERY):  # the loop cell, KL_EVERY iterations at a time
        namespace.update(cfg=dataclasses.replace(cfg, num_iterations=start + KL_EVERY), start_iteration=start)
        run_tagged_cell(ROOT / "3-RLHF.ipynb", "ppo-loop", namespace)
        kls.append(exact_kl_and_share(policy, ref_policy, probe_ids, probe_mask, in_set, eos, pad, seed)[0])
    scores = namespace["history"].series("env/raw_score_mean")[1]
    betas = namespace["history"].series("objective/kl_coef")[1]
    first, last = sum(scores[:5]) / 5, sum(scores[-5:]) / 5
    budget = kl_budget(p0, min(betas), length)
    summary = (
        f"score {first:.3f} -> {last:.3f}; peak KL {max(kls):.2f} nats, budget {budget:.2f} "
        f"(p0 {p0:.3f}, beta_min {min(betas):.4f}, length {length:.1f})"
    )
    print(summary)
    assert len(scores) == PPO_ITERATIONS
    assert last > first + 0.08 and last > 2 * first, summary
    assert max(kls) < budget, summary
    assert kls[-1] > 0.1, summary  # the policy did move away from the reference


# ---------------------------------------------------------------------------
# The independent judge


def test_the_judge_works_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("no network in this test")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    judge = ru.SentimentJudge()  # the lexicon ships inside the package
    texts = ["a charming , moving and wonderful film", "a dull , lifeless mess", "the film", "not good at all"]
    assert judge.positive(texts) == [True, False, False, False]
    scores = judge.scores(texts)
    assert scores[0] > 0.5 and scores[1] < -0.5 and scores[2] == 0.0 and all(-1 <= s <= 1 for s in scores)


def test_the_judge_likes_strings_of_positive_words_a_blind_spot_notebook_3_names():
    judge = ru.SentimentJudge()
    assert judge.positive(["good good good wonderful wonderful"]) == [True]


def test_a_missing_judge_package_says_how_to_install_it(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_vader(name, *args, **kwargs):
        if name.startswith("vaderSentiment"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_vader)
    with pytest.raises(ru.RLHFError, match="pip install vaderSentiment"):
        ru.SentimentJudge()
