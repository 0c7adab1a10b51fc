"""The notebooks as a learner runs them: the cpu profile end to end, fp16, the validation size, warmup rounding,
folders checked before training, progress bars and long cells under nbval, saved figures."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import read_without_outputs, under_a_file

import rlhf_utils as ru
from rlhf_support.profiles import BASE_MODEL_SIZES, build_smoke_dataset

# ---------------------------------------------------------------------------
# Warmup, the validation size, the metric history


def test_history_keeps_namespaced_series():
    history = ru.History()
    history.log(0, **{"env/score_mean": 1.0})
    history.log(1, **{"env/score_mean": 2.0, "loss/policy": 0.5})
    assert history.series("env/score_mean") == ([0, 1], [1.0, 2.0])
    assert history.series("loss/policy") == ([1], [0.5])
    assert history.last("env/score_mean") == 2.0
    assert list(history.to_frame().columns) == ["env/score_mean", "loss/policy"]


def run_cells(notebook: str, until: str, extra: str, folder: Path) -> str:
    """Run `notebook`'s code cells up to the first one containing `until`, then `extra`; returns what `extra` printed."""
    nbclient, nbformat = pytest.importorskip("nbclient"), pytest.importorskip("nbformat")
    nb = read_without_outputs(ROOT / notebook)
    code = [c for c in nb.cells if c.cell_type == "code"]
    nb.cells = code[: next(i for i, c in enumerate(code) if until in c.source) + 1] + [nbformat.v4.new_code_cell(extra)]
    nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
    ).execute()
    return nb.cells[-1].outputs[0]["text"]


@pytest.mark.usefixtures("no_rlhf_settings")
def test_both_notebooks_round_the_warmup_up(tmp_path, monkeypatch):
    """A warmup of 5.5 steps is 6 in both notebooks (notebook 2 once rounded it down with int())."""
    assert ru.warmup_steps(0.05, 100) == 5 and ru.warmup_steps(0.05, 110) == 6
    assert ru.warmup_steps(0.01, 10) == 1 and ru.warmup_steps(0.0, 10) == 0
    for name, value in {"RLHF_PROFILE": "smoke", "RLHF_OUTPUT_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1",
                        "RLHF_WARMUP_RATIO": "0.137", "RLHF_COMPARE_LOSSES": "0"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    said = run_cells("1-SFT.ipynb", "ru.lr_lambda(", "print(warmup_steps, total_steps)", ROOT)
    warmup, total = map(int, said.split())
    assert 0.137 * total % 1 != 0 and warmup == math.ceil(0.137 * total), said
    # notebook 2: the learning rates it logged follow the schedule with the warmup rounded up, not down
    said = run_cells(
        "2-RM Training.ipynb",
        "reward_model, history = train_reward_model(",
        "import json; print(json.dumps([history.series('train/lr')[1], cfg.learning_rate, cfg.lr_schedule, num_steps]))",
        ROOT,
    )
    lrs, lr, schedule, total = json.loads(said)
    assert 0.137 * total % 1 != 0, said

    def logged(warmup: int) -> list[float]:  # the rate after each optimizer step, as the notebook logs it
        return [lr * ru.lr_lambda(schedule, warmup, total)(step) for step in range(1, total + 1)]

    assert lrs == pytest.approx(logged(math.ceil(0.137 * total)), rel=1e-6)
    assert lrs != pytest.approx(logged(int(0.137 * total)), rel=1e-6)


def test_eval_sentences_cuts_the_validation_set_in_notebooks_1_and_2(tmp_path, monkeypatch):
    """Short full-profile checks were slow because validation could not be cut (872 sentences, every eval)."""
    nbclient, nbformat = pytest.importorskip("nbclient"), pytest.importorskip("nbformat")
    for name, value in {
        "RLHF_PROFILE": "smoke",
        "RLHF_OUTPUT_DIR": str(tmp_path),
        "RLHF_EVAL_SENTENCES": "40",
        "HF_HUB_OFFLINE": "1",
    }.items():
        monkeypatch.setenv(name, value)
    ru.prepare_profile(ru.make_config(ru.SFTConfig))
    for notebook, check in [("1-SFT.ipynb", "len(validation_split)"), ("2-RM Training.ipynb", "len(val_sentences)")]:
        nb = read_without_outputs(ROOT / notebook)
        code = [c for c in nb.cells if c.cell_type == "code"]
        code = code[: next(i for i, c in enumerate(code) if "ru.load_sst2(" in c.source) + 1]  # setup, config, data
        nb.cells = code + [nbformat.v4.new_code_cell(f"print('validating on', {check})")]
        nbclient.NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
        ).execute()
        assert "validating on 40" in nb.cells[-1].outputs[0]["text"], notebook


# ---------------------------------------------------------------------------
# The cpu profile end to end, saved figures


ROOT = Path(__file__).resolve().parents[1]


NOTEBOOKS = ["1-SFT.ipynb", "2-RM Training.ipynb", "3-RLHF.ipynb"]


def test_save_figure_writes_only_when_asked(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    assert ru.save_figure(fig, "", "curve") is None
    path = ru.save_figure(fig, str(tmp_path / "figs"), "curve")
    plt.close(fig)
    assert path == tmp_path / "figs" / "curve.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# A few steps of each notebook on 400 smoke sentences: the code paths of the cpu profile, not its results.
TINY_SLICE = {
    "RLHF_MAX_TRAIN_SAMPLES": "400",
    "RLHF_NUM_EPOCHS": "1",
    "RLHF_BATCH_SIZE": "32",
    "RLHF_EVAL_EVERY": "5",
    "RLHF_NUM_EVAL_GENERATIONS": "16",
    "RLHF_SAMPLE_MAX_NEW_TOKENS": "8",
    "RLHF_COMPARE_MAX_STEPS": "2",
    "RLHF_NORM_SAMPLES": "64",
    "RLHF_NUM_ITERATIONS": "3",
    "RLHF_MINIBATCH_SIZE": "16",
    "RLHF_PPO_EPOCHS": "1",
    "RLHF_RESPONSE_LENGTH": "8",
    "RLHF_EVAL_PROMPTS": "32",
    "RLHF_SAMPLES_EVERY": "2",
    "RLHF_CHECKPOINT_EVERY": "2",
    "RLHF_SAVE_WORSE_MODEL": "1",  # a few steps do not learn: the divergence guard would (rightly) refuse them
}


@pytest.mark.usefixtures("no_rlhf_settings")  # only the settings below: none of CI's (RLHF_PROFILE=smoke)
def test_cpu_profile_notebooks_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    data = build_smoke_dataset(tmp_path / "data" / "sst2", n_train=600, n_validation=80, seed=0)
    out, figures = tmp_path / "out", tmp_path / "figures"
    env = {
        "RLHF_PROFILE": "cpu",
        "RLHF_DATASET": str(data),
        "RLHF_OUTPUT_DIR": str(out),
        "RLHF_FIGURES_DIR": str(figures),
        "HF_HUB_OFFLINE": "1",
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1",
        **TINY_SLICE,
    }  # one thread: tiny matrices, and no spin-waiting on a busy machine
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for notebook in NOTEBOOKS:  # in order: each reads what the one before saved
        nb = read_without_outputs(ROOT / notebook)
        nbclient.NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
        ).execute()

    tokenizer = ru.load_tokenizer(str(out / "base_model"))
    assert ru.load_causal_lm(str(out / "base_model")).config.n_embd == BASE_MODEL_SIZES["cpu"]["n_embd"]
    sft_meta = ru.verify_checkpoint(out / "sft_model")
    assert sft_meta["profile"] == "cpu" and sft_meta["base_model"] == str(out / "base_model")
    sft = ru.load_causal_lm(str(out / "sft_model"))
    reward_model, reward_tokenizer, info = ru.load_reward_model(out / "reward_model")
    assert info["profile"] == "cpu" and info["trained_from"] == str(out / "base_model")
    assert info["score_std"] > 0 and abs(info["score_mean"]) < 1e3
    policy = ru.load_causal_lm(str(out / "ppo_policy"))
    for other in (
        ru.load_tokenizer(str(out / "sft_model")),
        reward_tokenizer,
        ru.load_tokenizer(str(out / "ppo_policy")),
    ):
        ru.require_same_vocabulary(tokenizer, other)  # raises when the token ids mean other words
    assert sft.config.vocab_size == policy.config.vocab_size == reward_model.config.vocab_size
    # one architecture throughout: the reward model's trunk and the PPO policy have the base model's shape
    assert reward_model.config.n_layer == sft.config.n_layer == policy.config.n_layer
    assert not torch.equal(sft.transformer.wte.weight, policy.transformer.wte.weight)  # PPO changed the policy
    # notebook 2's section 10 saved the learner's reward model where notebook 3's reward_model_dir can point
    mine, mine_tokenizer, mine_info = ru.load_reward_model(out / "my_reward_model")
    assert mine_info["labeller"] == "simulated" and mine_info["labels"] > 0 and mine_info["score_std"] > 0
    ru.require_same_vocabulary(tokenizer, mine_tokenizer)
    assert torch.equal(mine.trunk.wte.weight, reward_model.trunk.wte.weight)  # the trunk, frozen, with a new head
    assert not torch.equal(mine.head.linear.weight, reward_model.head.linear.weight)

    history = json.loads((out / "ppo_checkpoint" / "history.json").read_text())
    assert [row["step"] for row in history] == [0, 1, 2, 3]  # 0: the curve's point for the SFT policy
    assert all(0.0 <= row["env/positive_share"] <= 1.0 for row in history[1:])
    assert [row["step"] for row in history if "curve/judge_positive_share" in row] == [0, 3]  # start, and the end
    policy_meta = ru.verify_checkpoint(out / "ppo_policy")
    assert set(policy_meta["eval"]) >= {"positive_share", "kl_to_ref", "eos_share", "distinct_2"}
    assert 0.0 <= policy_meta["eval"]["distinct_2"] <= 1.0

    saved = sorted(p.name for p in figures.glob("*.png"))
    assert {"sft_loss.png", "rm_scores.png", "ppo_training.png", "ppo_vs_sft.png", "overoptimisation_curve.png"} <= set(
        saved
    ), saved


REAL_SST2 = ROOT.parent / "shared" / "data" / "sst2"  # beside a checkout in CI; a clone alone has no ../shared


@pytest.mark.skipif(not (REAL_SST2 / "train.jsonl").exists(), reason="needs real SST-2 in ../shared/data/sst2")
@pytest.mark.usefixtures("no_rlhf_settings")
def test_cpu_profile_sft_writes_words_on_real_sst2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Notebook 1 in the cpu profile, on real SST-2 but a short run: the model it saves writes words.

    The notebook measures the share of the words of 128 held-out prompts + continuations that occur in SST-2's
    training text, before and after SFT, and saves both with the model. A tokenizer or sampling bug (a wrong EOS,
    ids decoded with another vocabulary, a loss that trains nothing) makes made-up words, and this fails."""
    nbclient = pytest.importorskip("nbclient")
    out = tmp_path / "out"
    env = {
        "RLHF_PROFILE": "cpu",
        "RLHF_DATASET": str(REAL_SST2),
        "RLHF_OUTPUT_DIR": str(out),
        "RLHF_FIGURES_DIR": "",
        "HF_HUB_OFFLINE": "1",
        "MPLBACKEND": "Agg",
        "RLHF_MAX_TRAIN_SAMPLES": "16000",  # one pass over 16,000 phrases: 250 steps of 64, an eighth of the
        "RLHF_NUM_EPOCHS": "1",  # profile's training (two passes over all 67,349)
        "RLHF_EVAL_SENTENCES": "200",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    nb = read_without_outputs(ROOT / "1-SFT.ipynb")
    nbclient.NotebookClient(
        nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    samples = ru.verify_checkpoint(out / "sft_model")["samples"]
    assert samples["prompts"] == 128
    # The random base model glues random tokens together (58% of its words are real in the full run: with 24,576
    # tokens many tokens are whole words); an eighth of the profile's SFT already writes words, and words that end.
    assert samples["real_word_share"] >= max(0.9, samples["base_real_word_share"] + 0.2), samples
    assert samples["eos_share"] >= 0.5, samples  # that end


# ---------------------------------------------------------------------------
# Folders checked before training, figures, progress bars and long cells under nbval


@pytest.mark.usefixtures("no_rlhf_settings")
@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_every_notebook_stops_at_an_unwritable_folder_before_it_trains(notebook, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    for name, value in {"RLHF_PROFILE": "smoke", "RLHF_OUTPUT_DIR": str(tmp_path / "out"), "HF_HUB_OFFLINE": "1",
                        "RLHF_FIGURES_DIR": under_a_file(tmp_path), "MPLBACKEND": "Agg"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    nb = read_without_outputs(ROOT / notebook)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="RLHF_FIGURES_DIR"):
        client.execute()
    printed = json.dumps([c.get("outputs", []) for c in nb.cells if c.cell_type == "code"])
    assert "it/s" not in printed and "widget-view" not in printed  # no progress bar ran: nothing was trained
    assert not any(p.name.endswith(("_model", "_checkpoint", "_policy")) for p in (tmp_path / "out").rglob("*"))


def test_a_figure_that_cannot_be_saved_is_reported_not_raised(tmp_path, capsys):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, _ = plt.subplots()
    assert ru.save_figure(fig, under_a_file(tmp_path), "sft_loss") is None
    plt.close(fig)
    assert "Could not save the figure" in capsys.readouterr().out


def test_a_progress_bar_redraws_a_bounded_number_of_times(monkeypatch):
    redraws = []
    bar = ru.progress(range(50_000), desc="steps")
    monkeypatch.setattr(type(bar), "refresh", lambda self, *a, **k: redraws.append(self.n))
    for step in bar:
        bar.set_postfix(loss=f"{step:.3f}")  # as the training loops do, every step
    bar.close()
    assert len(redraws) <= 201, len(redraws)
    assert ru.progress(range(100)).miniters == 1  # a short loop still shows every step


LONG_CELL = """
import time
bar = ru.progress(range({steps}), desc="SFT")
for step in bar:
    bar.set_postfix(loss=f"{{2 + step * 1e-4:.4f}}", lr=f"{{1e-3:.1e}}")  # a value that changes every step, as a loss does
    if step % 5000 == 0:
        bar.write(f"step {{step}}: validation loss 1.0")
bar.close()
print("trained")
"""


def test_a_long_training_cell_passes_under_nbval(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbval")
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nimport rlhf_utils as ru"),
        nbformat.v4.new_code_cell(LONG_CELL.format(steps=30_000)),
    ]  # without the bound: ~30,000 messages
    nbformat.write(nb, tmp_path / "long_cell.ipynb")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--nbval-lax",
            "-p",
            "no:cacheprovider",
            "-q",
            str(tmp_path / "long_cell.ipynb"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:]


# ---------------------------------------------------------------------------
# The notebooks in fp16


# Appended to each notebook: the loop's own history, inspected in the notebook's kernel.
HISTORY_CHECK = """
import math
import re
assert precision.name == "fp16", precision
skipped = sum(history.series("{prefix}/skipped_steps")[1])
steps = len(history.series("{prefix}/skipped_steps")[1])
assert skipped >= 1, "no step overflowed: the test did not reach the skipping path"
assert skipped < steps * {per_row}, "every step was skipped: nothing trained"
infinite = [(row["step"], k, v) for row in history.rows for k, v in row.items() if not math.isfinite(v)]
assert not infinite, infinite
assert all(math.isfinite(v) for v in history.series("{loss}")[1])
print("fp16 check:", int(skipped), "skipped")
"""


STEPS = {
    "RLHF_MAX_TRAIN_SAMPLES": "400",
    "RLHF_NUM_EPOCHS": "2",
    "RLHF_EVAL_EVERY": "5",
    "RLHF_NUM_EVAL_GENERATIONS": "8",
    "RLHF_SAMPLE_MAX_NEW_TOKENS": "8",
    "RLHF_COMPARE_LOSSES": "0",
    "RLHF_NORM_SAMPLES": "64",
    "RLHF_NUM_ITERATIONS": "4",
    "RLHF_PPO_EPOCHS": "2",
    "RLHF_RESPONSE_LENGTH": "8",
    "RLHF_EVAL_PROMPTS": "16",
    "RLHF_CURVE_PROMPTS": "8",
}


@pytest.mark.usefixtures("no_rlhf_settings")
def test_the_notebooks_run_in_fp16_with_skipped_steps(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    env = {
        "RLHF_PROFILE": "smoke",
        "RLHF_OUTPUT_DIR": str(tmp_path / "out"),
        "RLHF_PRECISION": "fp16",
        "RLHF_INIT_LOSS_SCALE": str(2.0**24),
        "HF_HUB_OFFLINE": "1",
        "MPLBACKEND": "Agg",
        "RLHF_SAVE_WORSE_MODEL": "1",  # runs this short are not meant to learn; they exercise the fp16 path
        **STEPS,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    checks = {
        "1-SFT.ipynb": ("train", "train/loss", 1),
        "2-RM Training.ipynb": ("train", "train/loss", 1),
        "3-RLHF.ipynb": ("policy", "loss/policy", 8),
    }  # PPO: 2 epochs x 4 minibatches per logged row
    for notebook, (prefix, loss, per_row) in checks.items():
        nb = read_without_outputs(ROOT / notebook)
        nb.cells.append(nbformat.v4.new_code_cell(HISTORY_CHECK.format(prefix=prefix, loss=loss, per_row=per_row)))
        nbclient.NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
        ).execute()
        printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
        assert "fp16 check:" in printed, printed
    assert ru.verify_checkpoint(tmp_path / "out" / "ppo_policy")["kind"] == "causal_lm"


# ---------------------------------------------------------------------------
# The committed outputs: one named cpu-profile run, no secret, no machine path, small enough to open

RUN_NOTE = re.compile(r"\*\*The outputs in this copy\*\* come from one complete run of the `(\w+)` profile")
SECRET = re.compile(r"hf_[A-Za-z0-9]{20,}|(?i:token)\s*[=:]\s*['\"]?[A-Za-z0-9_\-]{20,}")
MACHINE_PATH = re.compile(r"(/work/|/tmp/|/home/|/root/|/usr/|/opt/|/private/|/Users/|[A-Z]:\\\\|site-packages|\.\./)")


def committed_output_text(cell) -> str:  # noqa: ANN001
    """Everything a committed code cell shows as text (images excluded): streams, values, errors."""
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", "") + output.get("evalue", "") + "".join(output.get("traceback", [])))
        parts += [v for k, v in output.get("data", {}).items() if k.startswith("text/") or k.endswith("json")]
    return "\n".join(p if isinstance(p, str) else json.dumps(p) for p in parts)


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_committed_outputs_are_one_named_run_without_secrets_or_paths(notebook: str) -> None:
    import nbformat

    path = ROOT / notebook
    assert path.stat().st_size < 2_000_000, f"{notebook} is {path.stat().st_size:,} bytes: keep it under 2 MB"
    nb = nbformat.read(path, as_version=4)
    notes = [RUN_NOTE.search(c.source) for c in nb.cells[:3] if c.cell_type == "markdown"]
    (note,) = [n for n in notes if n]
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "every code cell ran in the committed run"
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "one run, top to bottom"
    assert not any(o.get("output_type") == "error" for c in code for o in c.outputs)
    plots = sum("image/png" in o.get("data", {}) for c in code for o in c.outputs)
    assert plots >= 2, f"{notebook} shows {plots} plots: run it with the inline backend (no MPLBACKEND=Agg)"
    text = "\n".join(committed_output_text(c) for c in code)
    assert not SECRET.search(text), SECRET.search(text)
    assert not MACHINE_PATH.search(text), text[max(0, MACHINE_PATH.search(text).start() - 200) :][:400]
    assert "Resuming from the checkpoint" not in text, "a complete run trains: this one resumed a finished checkpoint"
    widgets = [o for c in code for o in c.outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert not widgets, "progress bars saved as widgets show a frozen 0%: python -m rlhf_support.publish <notebook>"
    assert "Generating train split" not in text and "Writing model shards" not in text  # the libraries' own bars
    assert code[-1].outputs and all(o.get("output_type") == "stream" for o in code[-1].outputs)  # no stray value
    (config_cell,) = [c for c in code if "make_config(ru." in c.source]
    profile = re.search(r"^profile\s+(\w+)", committed_output_text(config_cell), flags=re.M)
    assert profile and profile.group(1) == note.group(1), "the note names the profile the outputs came from"


def test_the_output_checks_catch_a_token_and_a_path() -> None:
    assert SECRET.search("hf_" + "A1b2C3d4E5f6G7h8I9j0K1l2") and SECRET.search("token = 'abcdefghijklmnopqrstuvwx'")
    assert MACHINE_PATH.search("saved to /home/learner/outputs") and MACHINE_PATH.search("C:\\\\Users\\\\x")
    assert MACHINE_PATH.search("'RLHF_DATASET': '../shared/data/sst2'")  # a folder outside the clone
    assert not MACHINE_PATH.search("saved to outputs/cpu/sft_model") and not SECRET.search("tokens: 1,024")


# The lesson first: markdown words per part of each notebook. Notebook 3 takes 90-110 minutes to present: 3,000 words
# for PPO (everything before section 8), 1,200 for section 8 (the critic-free estimators, best-of-N, DPO and the
# comparison). Notebook 2's optional section 10 (the learner labels) has its own 600.
WORD_BUDGET = {
    "1-SFT.ipynb": {"all": 1800},
    "2-RM Training.ipynb": {"before 10": 2400, "10": 600},
    "3-RLHF.ipynb": {"before 8": 3000, "8": 1200},
}


def markdown_words_by_section(notebook: str) -> dict[int, int]:
    """Markdown words per top-level section ("## 3. ..."); 0 holds everything before section 1."""
    import nbformat

    words, section = {}, 0
    for cell in nbformat.read(ROOT / notebook, as_version=4).cells:
        if cell.cell_type != "markdown":
            continue
        heading = re.match(r"## (\d+)\.", cell.source)
        section = int(heading.group(1)) if heading else section
        words[section] = words.get(section, 0) + len(cell.source.split())
    return words


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_each_notebook_reads_within_its_word_budget(notebook: str) -> None:
    import nbformat

    nb = nbformat.read(ROOT / notebook, as_version=4)
    by_section = markdown_words_by_section(notebook)
    for part, budget in WORD_BUDGET[notebook].items():
        if part == "all":
            words = sum(by_section.values())
        elif part.startswith("before "):
            words = sum(n for s, n in by_section.items() if s < int(part.split()[1]))
        else:
            words = by_section.get(int(part), 0)
        assert words <= budget, f"{notebook}, {part}: {words} markdown words, budget {budget}"
    first = [c.source for c in nb.cells[:4] if c.cell_type == "markdown"]
    assert first[0].startswith("[![Open In Colab]"), "the Colab badge comes first"
    assert any("**Before you start**" in s for s in first), "a before-you-start box at the top"
    assert "[[M:" not in json.dumps([c.source for c in nb.cells]), "a figure left to replace"
