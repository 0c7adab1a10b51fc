"""The 'cpu' profile: its settings, its helpers (distinct-n, figure saving), and all three notebooks run
end to end in it on a tiny slice, checking that what each notebook saves fits the next one.

The end-to-end test builds its own data (the smoke grammar) and writes only under pytest's tmp_path:
nothing touches outputs/, images/ or the real SST-2.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import rlhf_utils as ru
from rlhf_support import device
from rlhf_support.errors import ConfigError
from rlhf_support.profiles import BASE_MODEL_SIZES, build_smoke_dataset

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["1-SFT.ipynb", "2-RM Training.ipynb", "3-RLHF.ipynb"]


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


def test_cpu_profile_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    environ = {"RLHF_PROFILE": "cpu"}
    sft, rm, ppo = (ru.make_config(cls, environ) for cls in (ru.SFTConfig, ru.RMConfig, ru.PPOConfig))
    assert {c.profile for c in (sft, rm, ppo)} == {"cpu"}
    assert (
        sft.model_name == rm.model_name == "outputs/cpu/base_model"
    )  # the reward model starts from the base model too
    assert ppo.sft_model_dir == "outputs/cpu/sft_model" and ppo.reward_model_dir == "outputs/cpu/reward_model"
    assert sft.dataset_name == "stanfordnlp/sst2"  # real SST-2 (RLHF_DATASET points at a local copy)
    assert sft.figures_dir == "images/cpu_profile" and not ru.make_config(ru.SFTConfig, {}).figures_dir
    assert not ppo.require_cuda
    sizes = BASE_MODEL_SIZES["cpu"]
    assert (sizes["n_layer"], sizes["n_embd"], sizes["n_positions"], sizes["vocab_size"]) == (4, 128, 64, 4096)
    assert ru.make_config(ru.SFTConfig, {"RLHF_SMOKE": "1"}).profile == "smoke"  # the smoke switch still works
    with pytest.raises(ConfigError):
        ru.make_config(ru.SFTConfig, {"RLHF_SMOKE": "1", "RLHF_PROFILE": "cpu"})


def test_cpu_precision_is_bf16_only_where_the_cpu_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr(device, "cpu_supports_bf16", lambda native=native: native)
        assert ru.resolve_precision(cpu, "auto", "cpu").name == ("bf16" if native else "fp32")
        assert ru.resolve_precision(cpu, "auto", "full").name == "fp32"
        assert ru.resolve_precision(cpu, "auto", "smoke").name == "fp32"


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


def test_figures_dir_does_not_block_resuming() -> None:
    a = ru.make_config(ru.PPOConfig, {"RLHF_PROFILE": "cpu"})
    b = ru.make_config(ru.PPOConfig, {"RLHF_PROFILE": "cpu", "RLHF_FIGURES_DIR": "elsewhere"})
    assert ru.ppo_run_signature(a, "sft", "rm") == ru.ppo_run_signature(b, "sft", "rm")


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


@pytest.mark.usefixtures("no_rlhf_settings")  # e.g. CI's RLHF_SMOKE=1 would contradict RLHF_PROFILE=cpu
def test_cpu_profile_notebooks_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
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
        nb = nbformat.read(ROOT / notebook, as_version=4)
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
