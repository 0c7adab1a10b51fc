"""PPO checkpoints: resuming continues the interrupted run exactly; damaged checkpoints are refused.

The loop below is a compact copy of the numbered steps of 3-RLHF.ipynb, built from the same
rlhf_utils functions, on a tiny random GPT-2 so it runs in seconds. It also tests the passes the
loop relies on (log-probs and values under left padding, scores of prompt + response).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

import rlhf_utils as ru
from rlhf_support.checkpoints import MANIFEST, spare_folder
from rlhf_support.device import FP32
from rlhf_support.errors import TrainingDivergedError
from rlhf_support.notebook_cells import run_tagged_cell
from rlhf_support.resume import PPO_TRAINING_STATE, can_resume, load_ppo_checkpoint

ROOT = Path(__file__).resolve().parents[1]
EOS = PAD = 0
VOCAB, BATCH, MINIBATCH, RESPONSE_LENGTH, TEMPERATURE = 24, 8, 4, 6, 0.9
PROMPTS = [[1 + (7 * i + j) % (VOCAB - 1) for j in range(2 + i % 4)] for i in range(20)]
SIGNATURE = {"settings": {"learning_rate": 1e-2, "batch_size": BATCH}, "sft_model": "abc", "reward_model": "def"}


def tiny_config(n_embd: int = 16) -> GPT2Config:
    """A 1-layer GPT-2 without dropout (PPO runs the policy without dropout)."""
    return GPT2Config(
        vocab_size=VOCAB,
        n_positions=32,
        n_embd=n_embd,
        n_layer=1,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=EOS,
        eos_token_id=EOS,
    )


class Run:
    """Everything a PPO run holds in memory, built from a seed exactly as the notebook builds it."""

    def __init__(self, seed: int = 0, n_embd: int = 16):
        torch.manual_seed(seed)
        self.ref_policy = GPT2LMHeadModel(tiny_config(n_embd)).eval()
        self.policy = ru.PolicyWithValueHead(copy.deepcopy(self.ref_policy)).eval()
        torch.nn.init.normal_(self.policy.value_head.linear.weight, std=0.1)  # nonzero values from the start
        self.reward_model = ru.ScalarHeadModel(GPT2Model(tiny_config(n_embd))).eval()
        self.optimizer = ru.make_optimizer(self.policy, lr=1e-2)
        self.scaler = torch.amp.GradScaler("cpu", enabled=False)
        self.kl_controller = ru.AdaptiveKLController(0.1, target=0.5, horizon=50)
        self.generator = torch.Generator().manual_seed(seed)
        self.history = ru.History()


class Tokenizer:  # just what evaluate_policy uses: token ids written out as text
    eos_token_id = pad_token_id = EOS

    def batch_decode(self, rows, skip_special_tokens=True):
        return [" ".join(str(t) for t in row if t != EOS) for row in rows]

    def decode(self, ids):
        return " ".join(map(str, ids))


class PoisonedRewardModel(torch.nn.Module):
    """The run's reward model, except that from call `at` on the first score is NaN (a diverged run)."""

    def __init__(self, reward_model: torch.nn.Module, at: int | None):
        super().__init__()
        self.reward_model, self.at, self.calls = reward_model, at, 0

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        scores = self.reward_model.score(input_ids, attention_mask)
        if self.at is not None and self.calls >= self.at:
            scores[0] = float("nan")
        return scores


def ppo_iterations(
    run: Run,
    start: int,
    stop: int,
    folder: Path | None = None,
    checkpoint_every: int = 2,
    poison_scores_at: int | None = None,
    curve_every: int = 0,
) -> None:
    """Iterations start+1..stop of notebook 3's own PPO loop (its cell tagged "ppo-loop", executed as it is), on the
    tiny run: a checkpoint in `folder` every `checkpoint_every` iterations and at the end, a point of the
    over-optimisation curve every `curve_every` iterations (0: none)."""
    cfg = ru.PPOConfig(
        batch_size=BATCH,
        minibatch_size=MINIBATCH,
        ppo_epochs=2,
        response_length=RESPONSE_LENGTH,
        temperature=TEMPERATURE,
        require_cuda=False,
        num_iterations=stop,
        normalize_scores=False,
        checkpoint_dir=str(folder or tempfile.mkdtemp(prefix="unused-checkpoint-")),
        checkpoint_every=checkpoint_every if folder else 0,
        checkpoint_minutes=0,
        samples_every=10**9,
        eval_every=curve_every or 1,
        curve_prompts=6 if curve_every else 0,
        seed=5,
    )
    scorer = PoisonedRewardModel(run.reward_model, poison_scores_at - start if poison_scores_at else None)
    namespace = dict(
        ru=ru, torch=torch, time=time, display=lambda *args, **kwargs: None, cfg=cfg, device=torch.device("cpu"),
        precision=FP32, tokenizer=Tokenizer(), train_prompts=PROMPTS, policy=run.policy, ref_policy=run.ref_policy,
        reward_model=scorer, score_mean=0.0, score_std=1.0, reward_threshold=0.0, optimizer=run.optimizer,
        scaler=run.scaler, kl_controller=run.kl_controller, generator=run.generator, history=run.history,
        start_iteration=start, run_signature=SIGNATURE, pieces=ru.ppo_pieces(cfg),
        measure_curve=lambda: ru.curve_metrics(run.policy.lm, run.ref_policy, scorer, Tokenizer(), PROMPTS[:6], cfg,
                                               FP32, 0.0, ru.SentimentJudge()),
    )  # fmt: skip
    run_tagged_cell(ROOT / "3-RLHF.ipynb", "ppo-loop", namespace)


def untimed(rows: list[dict]) -> list[dict]:
    """A history without its timings (time/...), which differ between two runs of the same computation."""
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


def snapshot(run: Run) -> dict:
    """Copies of the state a checkpoint must restore."""
    return {
        "params": {k: v.clone() for k, v in run.policy.state_dict().items()},
        "optimizer": copy.deepcopy(run.optimizer.state_dict()),
        "kl_coef": run.kl_controller.value,
        "history": copy.deepcopy(run.history.rows),
        "generator": run.generator.get_state().clone(),
    }


def assert_same_optimizer_state(a: dict, b: dict) -> None:
    """Adam's step counts and moments equal, parameter by parameter."""
    assert a["state"].keys() == b["state"].keys() and len(a["state"]) > 0
    for index, state in a["state"].items():
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(torch.as_tensor(state[name]), torch.as_tensor(b["state"][index][name])), (index, name)
    assert [g["lr"] for g in a["param_groups"]] == [g["lr"] for g in b["param_groups"]]


def test_resume_continues_the_run_exactly(tmp_path):
    folder = tmp_path / "ppo_checkpoint"
    straight = Run()
    ppo_iterations(straight, 0, 2, folder)
    at_checkpoint = snapshot(straight)
    ppo_iterations(straight, 2, 4)  # the uninterrupted run goes on (no more checkpoints)
    assert straight.kl_controller.value != at_checkpoint["kl_coef"]  # the controller moved: the test can see it

    resumed = Run()  # a fresh process: the SFT weights again, new optimizer, new controller
    iteration, history = load_ppo_checkpoint(
        folder, resumed.policy, resumed.optimizer, resumed.scaler, resumed.kl_controller, resumed.generator
    )
    assert iteration == 2
    assert history.rows == at_checkpoint["history"] and len(history.rows) == 2
    assert resumed.kl_controller.value == at_checkpoint["kl_coef"]
    assert_same_optimizer_state(resumed.optimizer.state_dict(), at_checkpoint["optimizer"])
    assert torch.equal(resumed.generator.get_state(), at_checkpoint["generator"])
    for name, tensor in resumed.policy.state_dict().items():
        assert torch.equal(tensor, at_checkpoint["params"][name]), name

    resumed.history = history
    ppo_iterations(resumed, iteration, 4)
    for name, tensor in resumed.policy.state_dict().items():
        assert torch.equal(tensor, straight.policy.state_dict()[name]), name
    assert_same_optimizer_state(resumed.optimizer.state_dict(), straight.optimizer.state_dict())
    assert resumed.kl_controller.value == straight.kl_controller.value
    assert untimed(resumed.history.rows) == untimed(straight.history.rows)


def test_the_checkpoint_of_iteration_0_holds_no_weights_and_resumes_exactly(tmp_path):
    """Iteration 0's weights are the SFT model's, which the notebook loads anyway: that checkpoint is kilobytes."""
    folder = tmp_path / "ppo_checkpoint"
    straight = Run()
    ru.save_ppo_checkpoint(
        folder,
        straight.policy,
        straight.optimizer,
        straight.scaler,
        straight.kl_controller,
        0,
        straight.history,
        straight.generator,
        SIGNATURE,
    )
    assert not (folder / "policy.safetensors").exists() and ru.verify_checkpoint(folder)["weights"] is False
    assert sum(p.stat().st_size for p in folder.iterdir()) < 100_000
    ppo_iterations(straight, 0, 3)
    resumed = Run()  # a fresh process: the SFT weights again; its generator moved on, as other cells would move it
    resumed.generator.manual_seed(99)
    iteration, resumed.history = load_ppo_checkpoint(
        folder, resumed.policy, resumed.optimizer, resumed.scaler, resumed.kl_controller, resumed.generator
    )
    assert iteration == 0 and resumed.history.rows == []
    ppo_iterations(resumed, 0, 3)
    for name, tensor in resumed.policy.state_dict().items():
        assert torch.equal(tensor, straight.policy.state_dict()[name]), name
    assert untimed(resumed.history.rows) == untimed(straight.history.rows)


def test_the_curve_is_logged_restored_on_resume_and_does_not_change_training(tmp_path):
    folder = tmp_path / "ppo_checkpoint"
    with_curve, without = Run(), Run()
    ppo_iterations(with_curve, 0, 4, folder, curve_every=2)
    ppo_iterations(without, 0, 4)
    steps = [row["step"] for row in with_curve.history.rows if "curve/kl_to_ref" in row]
    assert steps == [2, 4]
    assert {"curve/positive_share", "curve/judge_positive_share", "curve/distinct_2"} <= set(with_curve.history.rows[1])
    for name, tensor in without.policy.state_dict().items():  # its own seeded generator: training is untouched
        assert torch.equal(tensor, with_curve.policy.state_dict()[name]), name
    resumed = Run()
    iteration, resumed.history = load_ppo_checkpoint(
        folder, resumed.policy, resumed.optimizer, resumed.scaler, resumed.kl_controller, resumed.generator
    )
    assert iteration == 4 and resumed.history.rows == with_curve.history.rows  # the curve came back with the history
    ppo_iterations(resumed, 4, 6, curve_every=2)
    ppo_iterations(with_curve, 4, 6, curve_every=2)
    assert untimed(resumed.history.rows) == untimed(with_curve.history.rows)


def test_the_policy_changes_between_checkpoints(tmp_path):
    """Guards the test above: without loading, a fresh run differs from the checkpoint."""
    folder = tmp_path / "ppo_checkpoint"
    trained = Run()
    ppo_iterations(trained, 0, 2, folder)
    fresh = Run()
    differs = [not torch.equal(v, trained.policy.state_dict()[k]) for k, v in fresh.policy.state_dict().items()]
    assert any(differs)


def test_damaged_checkpoints_are_refused(tmp_path):
    folder = tmp_path / "ppo_checkpoint"
    run = Run()
    ppo_iterations(run, 0, 2, folder)

    weights = folder / "policy.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # same size, other bytes: only the SHA-256 can tell
    weights.write_bytes(bytes(data))
    fresh = Run()
    with pytest.raises(ru.CheckpointError, match="corrupt"):
        load_ppo_checkpoint(folder, fresh.policy, fresh.optimizer, fresh.scaler, fresh.kl_controller)

    ppo_iterations(Run(), 0, 2, folder)  # a good checkpoint again
    (folder / PPO_TRAINING_STATE).unlink()
    with pytest.raises(ru.CheckpointError, match="missing"):
        can_resume(folder, SIGNATURE)


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    folder = tmp_path / "ppo_checkpoint"
    ppo_iterations(Run(n_embd=16), 0, 2, folder)
    other = Run(n_embd=8)
    with pytest.raises(ru.CheckpointError, match="does not fit"):
        load_ppo_checkpoint(folder, other.policy, other.optimizer, other.scaler, other.kl_controller)


def test_can_resume_only_the_same_run(tmp_path):
    folder = tmp_path / "ppo_checkpoint"
    ok, why = can_resume(folder, SIGNATURE)
    assert not ok and "No checkpoint" in why
    ppo_iterations(Run(), 0, 2, folder)
    ok, why = can_resume(folder, SIGNATURE)
    assert ok and "2 iterations" in why
    changed = {**SIGNATURE, "settings": {**SIGNATURE["settings"], "learning_rate": 3e-3}}
    ok, why = can_resume(folder, changed)
    assert not ok and "learning_rate: 0.01 -> 0.003" in why
    ok, why = can_resume(folder, {**SIGNATURE, "reward_model": "other"})
    assert not ok and "reward model changed" in why
    (folder / MANIFEST).write_text(json.dumps({"format": 1, "meta": {"kind": "causal_lm"}, "files": {}}))
    with pytest.raises(ru.CheckpointError, match="not a PPO checkpoint"):
        can_resume(folder, SIGNATURE)


def test_a_deleted_checkpoint_comes_back_from_its_spare_and_the_message_says_how_to_start_over(tmp_path, capsys):
    """A learner deletes ppo_checkpoint to start PPO over: the spare (*.old, the save before) is still a complete
    version, so it is put back and resumed (a save that failed part-way looks the same). The messages say what
    happened and how to start over; both ways they name work."""
    folder = tmp_path / "ppo_checkpoint"
    ppo_iterations(Run(), 0, 4, folder)  # checkpoints at iterations 2 and 4: the spare holds 2
    shutil.rmtree(folder)
    fresh = Run()
    done, history = ru.resume_or_start(
        SimpleNamespace(checkpoint_dir=str(folder), resume=True), SIGNATURE, fresh.policy, fresh.optimizer,
        fresh.scaler, fresh.kl_controller, fresh.generator,
    )  # fmt: skip
    said = capsys.readouterr().out
    assert done == 2 and len(history.rows) == 2  # the spare, not the deleted iteration 4
    assert "was missing, so its previous version (ppo_checkpoint.old) is back in place" in said
    assert "delete ppo_checkpoint.old as well" in said and "%env RLHF_RESUME=0" in said

    again = Run()  # the first way: RLHF_RESUME=0 starts from the SFT model; the run it replaces is the spare
    done, history = ru.resume_or_start(
        SimpleNamespace(checkpoint_dir=str(folder), resume=False), SIGNATURE, again.policy, again.optimizer,
        again.scaler, again.kl_controller, again.generator,
    )  # fmt: skip
    assert done == 0 and history.rows == [] and ru.verify_checkpoint(folder)["iteration"] == 0
    assert ru.verify_checkpoint(spare_folder(folder))["iteration"] == 2  # nothing saved was lost
    shutil.rmtree(folder)  # the second way: delete both folders
    shutil.rmtree(spare_folder(folder))
    ok, why = can_resume(folder, SIGNATURE)
    assert not ok and "No checkpoint" in why


def test_run_signature_ignores_bookkeeping_but_not_training_settings(tmp_path):
    env = {"RLHF_PROFILE": "smoke", "RLHF_OUTPUT_DIR": str(tmp_path)}
    inputs = (tmp_path / "sft_model", tmp_path / "reward_model")
    base = ru.ppo_run_signature(ru.make_config(ru.PPOConfig, env), *inputs)
    for bookkeeping in ("RLHF_NUM_ITERATIONS", "RLHF_EVAL_EVERY", "RLHF_CURVE_PROMPTS"):
        assert ru.ppo_run_signature(ru.make_config(ru.PPOConfig, {**env, bookkeeping: "7"}), *inputs) == base
    assert ru.ppo_run_signature(ru.make_config(ru.PPOConfig, {**env, "RLHF_VF_COEF": "0.5"}), *inputs) != base
    # the output folder mounted elsewhere (another Colab runtime): the smoke data inside it is the same setting
    moved = ru.make_config(ru.PPOConfig, {**env, "RLHF_OUTPUT_DIR": str(tmp_path / "mounted-elsewhere")})
    assert moved.dataset_name != ru.make_config(ru.PPOConfig, env).dataset_name
    assert ru.ppo_run_signature(moved, *inputs) == base


def test_divergence_stops_with_the_iteration_and_keeps_the_last_checkpoint(tmp_path):
    folder = tmp_path / "ppo_checkpoint"
    run = Run()
    with pytest.raises(TrainingDivergedError, match=r"grad_norm became nan at iteration/step 3"):
        ppo_iterations(run, 0, 4, folder, poison_scores_at=3)
    ok, why = can_resume(folder, SIGNATURE)
    assert ok and ru.verify_checkpoint(folder)["iteration"] == 2


# The passes the loop relies on


def test_policy_forward_matches_each_row_alone_under_left_padding():
    run = Run()
    rows = [[3, 5, 7, 9, 11], [4, 6, 8], [2, 10, 12, 14]]  # prompt + response, different prompt lengths
    prompt_lengths = [3, 1, 2]
    prompts = [r[:p] for r, p in zip(rows, prompt_lengths)]
    responses = [r[p:] for r, p in zip(rows, prompt_lengths)]
    prompt_ids, prompt_mask = ru.pad_batch(prompts, PAD, side="left")
    response_ids, response_mask = ru.pad_batch(responses, PAD, side="right")
    input_ids = torch.cat([prompt_ids, response_ids], 1)
    attention_mask = torch.cat([prompt_mask, response_mask], 1)
    with torch.no_grad():
        logprobs, values, entropy = ru.policy_forward(
            run.policy, input_ids, attention_mask, prompt_ids.shape[1], TEMPERATURE
        )
        ref_logprobs = ru.response_logprobs(run.ref_policy, input_ids, attention_mask, prompt_ids.shape[1], TEMPERATURE)
        for b, (row, p) in enumerate(zip(rows, prompt_lengths)):
            alone = torch.tensor([row])
            out = run.policy.lm(input_ids=alone, output_hidden_states=True)  # no padding, positions 0..n-1
            row_values = run.policy.value_head(out.hidden_states[-1])[0]
            ref_logits = run.ref_policy(input_ids=alone).logits[0]
            for i, token in enumerate(row[p:]):
                position = p + i - 1  # the logits there predict this token
                expected = torch.log_softmax(out.logits[0, position] / TEMPERATURE, -1)[token]
                assert math.isclose(logprobs[b, i].item(), expected.item(), abs_tol=1e-5)
                expected_ref = torch.log_softmax(ref_logits[position] / TEMPERATURE, -1)[token]
                assert math.isclose(ref_logprobs[b, i].item(), expected_ref.item(), abs_tol=1e-5)
                assert math.isclose(values[b, i].item(), row_values[position].item(), abs_tol=1e-5)
                probs = torch.softmax(out.logits[0, position] / TEMPERATURE, -1)
                assert math.isclose(entropy[b, i].item(), -(probs * probs.log()).sum().item(), abs_tol=1e-5)


def test_generated_tokens_get_the_logprobs_they_were_sampled_with():
    """The KV-cache sampler and the one-pass forward see the same distribution (positions, temperature)."""
    run = Run()
    prompt_ids, prompt_mask = ru.pad_batch(PROMPTS[:6], PAD, side="left")
    responses, response_mask = ru.generate(
        run.policy.lm,
        prompt_ids,
        prompt_mask,
        RESPONSE_LENGTH,
        EOS,
        PAD,
        temperature=TEMPERATURE,
        generator=torch.Generator().manual_seed(1),
    )
    input_ids = torch.cat([prompt_ids, responses], 1)
    attention_mask = torch.cat([prompt_mask, response_mask], 1)
    with torch.no_grad():
        logprobs, _, _ = ru.policy_forward(run.policy, input_ids, attention_mask, prompt_ids.shape[1], TEMPERATURE)
    for b in range(6):  # each row alone, token by token, without cache or padding
        row = PROMPTS[b][:]
        for i in range(int(response_mask[b].sum())):
            logits = run.policy.lm(input_ids=torch.tensor([row])).logits[0, -1] / TEMPERATURE
            token = int(responses[b, i])
            assert math.isclose(logprobs[b, i].item(), torch.log_softmax(logits, -1)[token].item(), abs_tol=1e-5)
            row.append(token)


def test_score_responses_reads_the_last_real_token():
    run = Run()
    prompt_ids, prompt_mask = ru.pad_batch([[3, 4, 5], [6]], PAD, side="left")
    response_ids, response_mask = ru.pad_batch([[7, EOS], [8, 9, 10, EOS]], PAD, side="right")
    with torch.no_grad():
        scores = ru.score_responses(run.reward_model, prompt_ids, prompt_mask, response_ids, response_mask)
        alone = [
            run.reward_model(torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long))[0, -1]
            for r in ([3, 4, 5, 7, EOS], [6, 8, 9, 10, EOS])
        ]
    assert torch.allclose(scores, torch.stack(alone), atol=1e-5)


def test_evaluate_policy_measures_what_it_sampled():
    run = Run()
    sampling = dict(temperature=1.0, seed=3, batch_size=4)  # the same random numbers in both evaluations
    models = (run.ref_policy, run.ref_policy, run.reward_model, Tokenizer(), PROMPTS[:10], RESPONSE_LENGTH)
    summary, table = ru.evaluate_policy(*models, **sampling)
    assert len(table) == 10 and table["kl"].abs().max() == 0.0  # the reference against itself
    assert summary["positive_share"] == (table["raw_score"] > 0).mean()
    median = float(table["raw_score"].median())  # a pairwise reward model's threshold is such a median (notebook 2)
    at_median, judged = ru.evaluate_policy(
        *models, **sampling, threshold=median, judge=ru.SentimentJudge(), chunk_size=3
    )
    assert at_median["positive_share"] == (table["raw_score"] > median).mean() == 0.5
    assert at_median["kl_to_ref"] == summary["kl_to_ref"]  # chunked passes: the same numbers
    texts = [p + r for p, r in zip(judged["prompt"], judged["response"])]
    assert judged["judge_score"].tolist() == ru.SentimentJudge().scores(texts)
    assert at_median["judge_positive_share"] == (judged["judge_score"] > 0.05).mean()
    nll_per_token = table["ref_nll"].sum() / table["length"].sum()
    assert math.isclose(summary["ref_perplexity"], math.exp(nll_per_token), rel_tol=1e-9)
    assert 1.0 < summary["ref_perplexity"] < VOCAB * 3  # a random model is roughly uniform over the vocabulary
    again, _ = ru.evaluate_policy(
        run.ref_policy,
        run.ref_policy,
        run.reward_model,
        Tokenizer(),
        PROMPTS[:10],
        RESPONSE_LENGTH,
        temperature=1.0,
        seed=3,
        batch_size=4,
    )
    assert again == summary  # the same seed samples the same responses
    trained = Run()
    ppo_iterations(trained, 0, 3)
    summary_ppo, _ = ru.evaluate_policy(
        trained.policy.lm,
        trained.ref_policy,
        trained.reward_model,
        Tokenizer(),
        PROMPTS[:10],
        RESPONSE_LENGTH,
        temperature=1.0,
        seed=3,
        batch_size=4,
    )
    assert summary_ppo["kl_to_ref"] != 0.0


def test_missing_inputs_name_the_notebook_the_variable_and_the_hub(tmp_path):
    cfg = ru.make_config(ru.PPOConfig, {"RLHF_OUTPUT_DIR": str(tmp_path)})
    with pytest.raises(ru.CheckpointError) as error:
        ru.find_ppo_inputs(cfg)
    message = str(error.value)
    assert "1-SFT.ipynb" in message and "RLHF_SFT_MODEL_DIR" in message and "hub repo" in message
    assert "2-RM Training.ipynb" in message and "RLHF_REWARD_MODEL_DIR" in message
    (tmp_path / "sft_model").mkdir()
    with pytest.raises(ru.CheckpointError) as error:
        ru.find_ppo_inputs(cfg)
    assert "SFT" not in str(error.value) and "2-RM Training.ipynb" in str(error.value)
    (tmp_path / "reward_model").mkdir()
    assert ru.find_ppo_inputs(cfg) == (tmp_path / "sft_model", tmp_path / "reward_model")  # both there
    # the full profile's default, outputs/sft_model, stays a local path even where outputs/ does not exist yet
    default = ru.make_config(ru.PPOConfig, {"RLHF_OUTPUT_DIR": "outputs-that-do-not-exist"})
    with pytest.raises(ru.CheckpointError, match="No SFT model at outputs-that-do-not-exist/sft_model"):
        ru.find_ppo_inputs(default)
