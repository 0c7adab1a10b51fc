"""What the learner writes runs the training. Each notebook is run in the smoke profile with its exercise cells as
committed (stubs: the tested pieces), with the solutions written in, with a wrong answer that fails its check, and with
an answer that passes its check but fails inside the training. The solutions give the tested run's figures; the
wrong answers fall back to the tested pieces, say so, and give the tested figures too."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
from conftest import ROOT, read_without_outputs

import rlhf_utils as ru
from rlhf_support import exercises

SMALL = {  # a short smoke run: enough steps to train, few enough for CI
    "RLHF_MAX_TRAIN_SAMPLES": "640", "RLHF_NUM_EPOCHS": "2", "RLHF_EVAL_EVERY": "20", "RLHF_NUM_EVAL_GENERATIONS": "16",
    "RLHF_COMPARE_MAX_STEPS": "20", "RLHF_NORM_SAMPLES": "64", "RLHF_NUM_ITERATIONS": "6", "RLHF_EVAL_PROMPTS": "32",
    "RLHF_CURVE_PROMPTS": "16", "RLHF_SAMPLES_EVERY": "3", "RLHF_CHECKPOINT_EVERY": "3",
}  # fmt: skip


def run(notebook: str, out: Path, cells: dict[str, str], monkeypatch: pytest.MonkeyPatch, **settings: str) -> str:
    """Execute `notebook` in the smoke profile writing to `out`, its exercise cells replaced as `cells` says
    ({exercise: source}; the others stay as committed); returns everything its cells printed."""
    import nbclient

    nb = read_without_outputs(ROOT / notebook)
    for cell in nb.cells:
        if "exercise" in cell.metadata.get("tags", []):
            (name,) = re.findall(r"^def my_(\w+)", cell.source, flags=re.M)
            cell.source = cells.get(name, cell.source)
    env = {"RLHF_PROFILE": "smoke", "RLHF_OUTPUT_DIR": str(out), "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg",
           **{k: v for k, v in SMALL.items() if v}, **settings}  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    return "\n".join(
        "".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    )


def solutions_for(notebook: str) -> dict[str, str]:
    """Each exercise of `notebook` answered with its solution (rlhf_support/solutions.py)."""
    names = [n for n, e in exercises.EXERCISES.items() if e.notebook == notebook]
    return {n: f"from rlhf_support.solutions import {n} as my_{n}" for n in names}


def untimed(path: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in json.loads(path.read_text())]


@pytest.fixture(scope="module")
def tested(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three notebooks with their committed stubs: the tested pieces throughout."""
    out = tmp_path_factory.mktemp("tested")
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name in [k for k in __import__("os").environ if k.startswith("RLHF_")]:
            monkeypatch.delenv(name)
        for notebook in ("1-SFT.ipynb", "2-RM Training.ipynb", "3-RLHF.ipynb"):
            said = run(notebook, out, {}, monkeypatch)
            assert "is not done yet" in said and "your exercise is not done yet" in said
    return out


@pytest.mark.usefixtures("no_rlhf_settings")
def test_notebook_1_trains_with_the_learners_labels_and_loss(tested: Path, tmp_path: Path, monkeypatch) -> None:
    said = run("1-SFT.ipynb", tmp_path, solutions_for("1-SFT"), monkeypatch)
    assert said.count("From here on the training uses yours") == 2
    assert re.search(r"lm_labels\s+section 1\.2\s+yours", said) and re.search(
        r"causal_lm_loss\s+section 2\s+yours", said
    )
    mine, theirs = ru.verify_checkpoint(tmp_path / "sft_model"), ru.verify_checkpoint(tested / "sft_model")
    # the solution's loss is a loop over tokens: the same value up to float32 rounding, so the runs agree closely
    assert math.isclose(mine["validation"]["value"], theirs["validation"]["value"], abs_tol=2e-3)


@pytest.mark.usefixtures("no_rlhf_settings")
def test_notebook_1_with_a_wrong_answer_says_so_and_trains_with_the_tested_pieces(
    tested, tmp_path, monkeypatch
) -> None:
    wrong = "def my_lm_labels(input_ids, attention_mask):\n    return input_ids.masked_fill(input_ids == 0, -100)"
    said = run("1-SFT.ipynb", tmp_path, {"lm_labels": wrong}, monkeypatch)
    assert "Not yet: your labels drop the EOS" in said and "yours did not pass its check yet" in said
    mine, theirs = ru.verify_checkpoint(tmp_path / "sft_model"), ru.verify_checkpoint(tested / "sft_model")
    assert mine["validation"] == theirs["validation"]  # the tested pieces ran: the same figures exactly


@pytest.mark.usefixtures("no_rlhf_settings")
def test_notebook_2_trains_with_the_learners_reading_and_pairwise_loss(tested, tmp_path, monkeypatch) -> None:
    said = run("2-RM Training.ipynb", tmp_path, solutions_for("2-RM Training"), monkeypatch)
    assert re.search(r"score_at_last_token\s+section 3\.1\s+yours", said)
    assert re.search(r"pairwise_reward_loss\s+section 5\.1\s+yours", said)  # the comparison's pairwise model
    _, _, mine = ru.load_reward_model(tmp_path / "reward_model")
    _, _, theirs = ru.load_reward_model(tested / "reward_model")
    assert (mine["eval_auc"], mine["eval_accuracy"], mine["score_mean"]) == (
        theirs["eval_auc"], theirs["eval_accuracy"], theirs["score_mean"])  # fmt: skip


def notebook_3(tested: Path, out: Path, cells: dict[str, str], monkeypatch) -> str:  # noqa: ANN001
    """Notebook 3 on the tested run's SFT and reward models (so only notebook 3's pieces differ)."""
    shutil.copytree(tested / "base_model", out / "base_model")
    return run("3-RLHF.ipynb", out, cells, monkeypatch, RLHF_SFT_MODEL_DIR=str(tested / "sft_model"),
               RLHF_REWARD_MODEL_DIR=str(tested / "reward_model"))  # fmt: skip


@pytest.mark.usefixtures("no_rlhf_settings")
def test_notebook_3_runs_ppo_with_the_learners_pieces(tested: Path, tmp_path: Path, monkeypatch) -> None:
    said = notebook_3(tested, tmp_path, solutions_for("3-RLHF"), monkeypatch)
    for name in ("compute_rewards", "compute_gae", "ppo_policy_loss", "ppo_value_loss", "approx_kl"):
        assert re.search(rf"{name}\s+section 3\.\d\s+yours", said), name
    # the solutions compute the same float32 operations as the tested pieces: the same run, bit for bit
    assert untimed(tmp_path / "ppo_checkpoint" / "history.json") == untimed(tested / "ppo_checkpoint" / "history.json")


@pytest.mark.usefixtures("no_rlhf_settings")
def test_a_piece_that_fails_inside_the_loop_is_named_and_the_loop_goes_on(tested, tmp_path, monkeypatch) -> None:
    trap = (
        "from rlhf_support.solutions import compute_gae\n\n\n"
        "def my_compute_gae(values, rewards, mask, gamma, lam):\n"
        "    if values.shape[0] > 16:  # passes the check's small batches, breaks on the training's\n"
        "        raise IndexError('row 16 is out of range')\n"
        "    return compute_gae(values, rewards, mask, gamma, lam)\n"
    )
    said = notebook_3(tested, tmp_path, {**solutions_for("3-RLHF"), "compute_gae": trap}, monkeypatch)
    assert "Correct: your compute_gae matches" in said
    assert "Your compute_gae (the exercise of section 3.5) raised IndexError: row 16 is out of range" in said
    assert untimed(tmp_path / "ppo_checkpoint" / "history.json") == untimed(tested / "ppo_checkpoint" / "history.json")
