"""DPO (notebook 3, section 8.3): the loss against a plain loop written from the paper's formula, the preference
pairs from the series' own models, the implicit reward, and notebook 3's own DPO loop raising the reward model's
preference for the policy's responses in the smoke profile."""

from __future__ import annotations

import math
import time

import pytest
import torch
from conftest import ROOT

import rlhf_utils as ru
from rlhf_support.notebook_cells import run_tagged_cell


def plain_dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta) -> float:  # noqa: ANN001
    """Rafailov et al. (2023), eq. 7, one pair at a time: -log sigmoid(beta [log pi(y_w)/pi_ref(y_w) -
    log pi(y_l)/pi_ref(y_l)]), averaged."""
    total = 0.0
    for win, lose, ref_win, ref_lose in zip(chosen, rejected, ref_chosen, ref_rejected):
        h = beta * ((win - ref_win) - (lose - ref_lose))
        total += math.log1p(math.exp(-h)) if h > -30 else -h  # -log sigmoid(h), exactly for the sizes drawn here
    return total / len(chosen)


@pytest.mark.parametrize("beta", [0.05, 0.1, 0.5])
@pytest.mark.parametrize("seed", [0, 1])
def test_the_dpo_loss_is_the_papers_formula(beta: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    chosen, rejected = -torch.rand(7, generator=generator) * 30, -torch.rand(7, generator=generator) * 30
    ref_chosen, ref_rejected = (
        chosen + torch.randn(7, generator=generator),
        rejected + torch.randn(7, generator=generator),
    )
    chosen64 = chosen.double().requires_grad_(True)
    loss, stats = ru.dpo_loss(chosen64, rejected.double(), ref_chosen.double(), ref_rejected.double(), beta)
    want = plain_dpo_loss(*(t.tolist() for t in (chosen, rejected, ref_chosen, ref_rejected)), beta)
    assert loss.item() == pytest.approx(want, rel=1e-9)
    # d loss / d log pi(y_w) = -beta (1 - sigmoid(h)) / N, per pair
    loss.backward()
    h = beta * ((chosen - ref_chosen) - (rejected - ref_rejected)).double()
    assert torch.allclose(chosen64.grad, -beta * (1 - torch.sigmoid(h)) / 7)
    margins = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
    assert stats["accuracy"].item() == pytest.approx((margins > 0).float().mean().item())
    assert stats["margin"].item() == pytest.approx(margins.mean().item(), rel=1e-5)


def test_the_dpo_loss_is_log_2_at_the_reference_and_stable_far_from_it() -> None:
    logps = torch.tensor([-12.0, -3.0])
    loss, stats = ru.dpo_loss(logps, logps.flip(0), logps, logps.flip(0), beta=0.1)
    assert loss.item() == pytest.approx(math.log(2)) and stats["margin"].item() == 0
    far, _ = ru.dpo_loss(torch.tensor([-2000.0]), torch.tensor([0.0]), torch.zeros(1), torch.zeros(1), beta=0.1)
    assert far.item() == pytest.approx(200.0)  # finite: logsigmoid, not log(sigmoid)


def test_sequence_logprobs_sum_the_response_tokens(tiny_lm) -> None:  # noqa: ANN001
    ids, mask = ru.pad_batch([[5, 6, 7, 8, 9], [5, 6, 7]], pad_id=0, side="right")
    logprobs = ru.response_logprobs(tiny_lm, ids, mask, response_start=2)  # (B, R)
    got = ru.sequence_logprobs(tiny_lm, ids, mask, response_start=2)
    assert torch.allclose(got, torch.stack([logprobs[0].sum(), logprobs[1, :1].sum()]))


def toy_setup(smoke_dirs, tokenizer, smoke_rows):  # noqa: ANN001, ANN201
    from test_ppo import ShareOfSet, token_prompts

    in_set = torch.zeros(len(tokenizer), dtype=torch.bool)
    in_set[torch.randperm(len(tokenizer), generator=torch.Generator().manual_seed(123))[:64]] = True
    prompts = token_prompts([r["sentence"] for r in smoke_rows["train"][:400]], tokenizer)
    ref = ru.load_causal_lm(str(smoke_dirs["base"])).eval().requires_grad_(False)
    return ShareOfSet(in_set), prompts, ref


def test_preference_pairs_rank_by_the_reward_and_carry_the_references_logprobs(smoke_dirs, tokenizer, smoke_rows):
    reward_model, prompts, ref = toy_setup(smoke_dirs, tokenizer, smoke_rows)
    cfg = ru.PPOConfig(batch_size=32, minibatch_size=16, response_length=8, require_cuda=False, missing_eos_penalty=0.0)
    eos = tokenizer.eos_token_id
    pairs = ru.sample_preference_pairs(ref, ref, reward_model, prompts, 40, cfg, 0.0, 1.0,
                                       torch.Generator().manual_seed(0), pad_id=eos, eos_id=eos)  # fmt: skip
    assert len(pairs.chosen_ids) + pairs.ties == 40
    assert (pairs.chosen_scores > pairs.rejected_scores).all()
    # both responses of a pair continue the same prompt
    assert torch.equal(pairs.chosen_ids[:, : pairs.start] * pairs.chosen_mask[:, : pairs.start],
                       pairs.rejected_ids[:, : pairs.start] * pairs.rejected_mask[:, : pairs.start])  # fmt: skip
    again = ru.sequence_logprobs(ref, pairs.chosen_ids, pairs.chosen_mask, pairs.start)
    assert torch.allclose(again, pairs.ref_chosen_logps, atol=1e-5)  # re-padding changed nothing
    assert torch.allclose(reward_model.score(pairs.chosen_ids[:, pairs.start - 4 :], pairs.chosen_mask[:, pairs.start - 4 :]),
                          pairs.chosen_scores)  # fmt: skip


def run_dpo_loop(cfg, smoke_dirs, tokenizer, ref, reward_model, prompts) -> dict:  # noqa: ANN001
    """Notebook 3's DPO loop cell (tagged "dpo-loop") on CPU in fp32 from the smoke base model; its namespace after."""
    cpu, fp32 = torch.device("cpu"), ru.resolve_precision(torch.device("cpu"), "fp32")
    namespace = dict(
        ru=ru, torch=torch, time=time, cfg=cfg, device=cpu, precision=fp32, tokenizer=tokenizer,
        sft_model_path=smoke_dirs["base"], ref_policy=ref, reward_model=reward_model, train_prompts=prompts,
        score_mean=0.0, score_std=1.0, scaler=fp32.grad_scaler(), pieces=ru.ppo_pieces(cfg),
    )  # fmt: skip
    run_tagged_cell(ROOT / "3-RLHF.ipynb", "dpo-loop", namespace)
    return namespace


def test_notebook_3s_dpo_loop_raises_the_reward_models_preference(smoke_dirs, tokenizer, smoke_rows) -> None:
    """The DPO loop cell of notebook 3 (tagged "dpo-loop"), offline, on pairs ranked by a toy reward (the share of a
    response's tokens in a set S): the policy's own samples score higher afterwards, and its implicit reward ranks
    most held-out pairs as the toy reward does."""
    reward_model, prompts, ref = toy_setup(smoke_dirs, tokenizer, smoke_rows)
    eos = tokenizer.eos_token_id
    cfg = ru.PPOConfig(batch_size=64, minibatch_size=32, response_length=8, require_cuda=False, missing_eos_penalty=0.0,
                       dpo_pairs=512, dpo_epochs=4, dpo_batch_size=32, dpo_learning_rate=3e-3, dpo_beta=0.1)  # fmt: skip
    namespace = run_dpo_loop(cfg, smoke_dirs, tokenizer, ref, reward_model, prompts)
    policy, fp32 = namespace["dpo_policy"], namespace["precision"]

    def reward_of_samples(lm) -> float:  # noqa: ANN001
        pairs = ru.sample_preference_pairs(lm, ref, reward_model, prompts[:200], 128, cfg, 0.0, 1.0,
                                           torch.Generator().manual_seed(7), pad_id=eos, eos_id=eos)  # fmt: skip
        return torch.cat([pairs.chosen_scores, pairs.rejected_scores]).mean().item()

    before, after = reward_of_samples(ref), reward_of_samples(policy)
    losses = namespace["dpo_history"].series("dpo/loss")[1]
    assert sum(losses[-5:]) / 5 < math.log(2) - 0.05, losses  # it fitted the pairs
    assert after > 1.5 * before, (before, after)  # and its own responses now score higher
    agreement = ru.implicit_reward_agreement(policy, ref, reward_model, prompts[200:], cfg, 0.0, 1.0, fp32, eos, eos)
    print(f"toy reward of the samples {before:.3f} -> {after:.3f}; implicit-reward agreement {agreement:.1%}")
    assert agreement > 0.6, agreement


def test_the_dpo_loop_takes_no_step_when_every_pair_ties(smoke_dirs, tokenizer, smoke_rows) -> None:
    """A reward that scores every response alike ranks nothing: no pair, no step, the policy still the SFT model."""
    from test_ppo import ShareOfSet

    _, prompts, ref = toy_setup(smoke_dirs, tokenizer, smoke_rows)
    cfg = ru.PPOConfig(batch_size=64, minibatch_size=32, response_length=8, require_cuda=False, missing_eos_penalty=0.0,
                       dpo_pairs=64, dpo_rounds=2, dpo_epochs=2, dpo_batch_size=32)  # fmt: skip
    namespace = run_dpo_loop(
        cfg, smoke_dirs, tokenizer, ref, ShareOfSet(torch.zeros(len(tokenizer), dtype=torch.bool)), prompts
    )
    assert namespace["step"] == 0 and len(namespace["pairs"].chosen_ids) == 0
    after, before = namespace["dpo_policy"].state_dict(), ref.state_dict()
    assert all(torch.equal(after[name], before[name]) for name in before)
