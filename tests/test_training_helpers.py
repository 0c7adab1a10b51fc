"""Training helpers shared by the notebooks: the SFT loss, validation loss, sampling for
before/after tables, the learning-rate schedule, the optimiser's parameter groups, one optimiser
step with clipping, and the early check that an output folder is writable."""

import math
import random
from pathlib import Path

import pytest
import torch

import rlhf_utils as ru
from rlhf_support.checkpoints import make_writable_folder

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


def test_length_grouped_batches_for_evaluation_are_sorted_and_complete():
    rng = random.Random(0)
    lengths = [rng.randint(1, 30) for _ in range(103)]
    batches = ru.length_grouped_batches(lengths, 10, shuffle=False)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(103))
    assert [lengths[i] for i in flat] == sorted(lengths)
    assert len(ru.length_grouped_batches(lengths, 10, shuffle=False, drop_last=True)) == 10


def test_check_writable_fails_early_with_a_message(tmp_path):
    assert make_writable_folder(tmp_path / "new" / "folder").is_dir()
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ru.CheckpointError, match="RLHF_OUTPUT_DIR"):
        make_writable_folder(blocker / "outputs")


def test_history_keeps_namespaced_series():
    history = ru.History()
    history.log(0, **{"env/score_mean": 1.0})
    history.log(1, **{"env/score_mean": 2.0, "loss/policy": 0.5})
    assert history.series("env/score_mean") == ([0, 1], [1.0, 2.0])
    assert history.series("loss/policy") == ([1], [0.5])
    assert history.last("env/score_mean") == 2.0
    assert list(history.to_frame().columns) == ["env/score_mean", "loss/policy"]


def test_warmup_rounds_up_the_same_way_in_both_notebooks():
    assert ru.warmup_steps(0.05, 100) == 5
    assert ru.warmup_steps(0.05, 110) == 6  # 5.5 rounds up (int() in notebook 2 rounded it down)
    assert ru.warmup_steps(0.01, 10) == 1 and ru.warmup_steps(0.0, 10) == 0
    import nbformat

    for name in ("1-SFT.ipynb", "2-RM Training.ipynb"):
        source = "\n".join(c.source for c in nbformat.read(ROOT / name, as_version=4).cells if c.cell_type == "code")
        assert "ru.warmup_steps(cfg.warmup_ratio" in source and "int(cfg.warmup_ratio" not in source, name


@pytest.mark.usefixtures("no_rlhf_settings")
def test_eval_sentences_cuts_the_validation_set_in_notebooks_1_and_2(tmp_path, monkeypatch):
    """Short full-profile checks were slow because validation could not be cut (872 sentences, every eval)."""
    nbclient, nbformat = pytest.importorskip("nbclient"), pytest.importorskip("nbformat")
    for name, value in {
        "RLHF_SMOKE": "1",
        "RLHF_OUTPUT_DIR": str(tmp_path),
        "RLHF_EVAL_SENTENCES": "40",
        "HF_HUB_OFFLINE": "1",
    }.items():
        monkeypatch.setenv(name, value)
    ru.prepare_profile(ru.make_config(ru.SFTConfig))
    for notebook, check in [("1-SFT.ipynb", "len(validation_split)"), ("2-RM Training.ipynb", "len(val_sentences)")]:
        nb = nbformat.read(ROOT / notebook, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        code = code[: next(i for i, c in enumerate(code) if "ru.load_sst2(" in c.source) + 1]  # setup, config, data
        nb.cells = code + [nbformat.v4.new_code_cell(f"print('validating on', {check})")]
        nbclient.NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
        ).execute()
        assert "validating on 40" in nb.cells[-1].outputs[0]["text"], notebook


def test_the_health_table_flags_values_outside_the_rules_of_thumb():
    history = ru.History()
    for step in range(1, 21):
        history.log(
            step,
            **{
                "policy/clipfrac": 0.1,
                "policy/approx_kl": 0.2 if step > 10 else 0.01,
                "value/explained_variance": step / 20,
                "policy/entropy": 2.0 - step * 0.09,
                "objective/kl": 6.0,
            },
        )
    cfg = ru.make_config(ru.PPOConfig, {}, kl_target=6.0)
    table = ru.ppo_health_table(history, cfg)
    assert table.loc["policy/clipfrac", "reading"] == "within the range"
    assert table.loc["policy/approx_kl", "reading"].startswith("above 0.05")  # mean 0.105
    assert table.loc["value/explained_variance", "reading"] == "within the range"  # last quarter 0.9
    assert table.loc["policy/entropy", "reading"].startswith("below 0.3")  # 0.29 / 1.91 of its start
    assert table.loc["objective/kl", "reading"] == "within the range"
    fixed = ru.ppo_health_table(history, ru.make_config(ru.PPOConfig, {}, adaptive_kl=False))
    assert "objective/kl" not in fixed.index  # a fixed beta has no target to compare with
