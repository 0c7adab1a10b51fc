"""Configuration (profiles, RLHF_ variables), precision, and the data helpers.

Config tests pass an explicit `environ`, so the RLHF_SMOKE=1 the test command sets does not leak in.
"""

import dataclasses
import json
import math
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

import rlhf_utils as ru
from rlhf_support import smoke_data
from rlhf_support.config import ALL_CONFIGS, PROFILE_NAMES, PROFILE_OVERRIDES, selected_profile
from rlhf_support.data import validate_sst2
from rlhf_support.device import cpu_supports_bf16
from rlhf_support.errors import ConfigError, DatasetSchemaError, TrainingDivergedError

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------
# Profiles


@pytest.mark.parametrize(
    "environ,expected",
    [
        ({}, "full"),
        ({"RLHF_SMOKE": "1"}, "smoke"),
        ({"RLHF_SMOKE": "true"}, "smoke"),
        ({"RLHF_SMOKE": "0"}, "full"),
        ({"RLHF_PROFILE": "cpu"}, "cpu"),
        ({"RLHF_PROFILE": " Smoke "}, "smoke"),
        ({"RLHF_PROFILE": "full"}, "full"),
        ({"RLHF_PROFILE": "smoke", "RLHF_SMOKE": "1"}, "smoke"),  # they agree
        ({"RLHF_PROFILE": "cpu", "RLHF_SMOKE": "0"}, "cpu"),
    ],
)
def test_selected_profile(environ, expected):
    assert selected_profile(environ) == expected


def test_conflicting_or_unknown_profile_is_refused():
    with pytest.raises(ConfigError, match="RLHF_SMOKE=1 and RLHF_PROFILE=cpu"):
        selected_profile({"RLHF_SMOKE": "1", "RLHF_PROFILE": "cpu"})
    with pytest.raises(ConfigError, match="tiny"):
        selected_profile({"RLHF_PROFILE": "tiny"})
    with pytest.raises(ConfigError):
        ru.make_config(ru.SFTConfig, environ={"RLHF_SMOKE": "1", "RLHF_PROFILE": "full"})


@pytest.mark.parametrize("cls", ALL_CONFIGS)
@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_profiles_apply_their_values(cls, profile):
    cfg = ru.make_config(cls, environ={"RLHF_PROFILE": profile})
    assert cfg.profile == profile
    overrides = {
        **PROFILE_OVERRIDES.get(profile, {}).get("*", {}),
        **PROFILE_OVERRIDES.get(profile, {}).get(cls.__name__, {}),
    }
    defaults = cls(profile=profile)
    for f in dataclasses.fields(cls):
        expected = overrides.get(f.name, getattr(defaults, f.name))
        if isinstance(expected, str):
            expected = expected.replace("{output_dir}", cfg.output_dir)
        assert getattr(cfg, f.name) == expected, f.name
    if profile != "full":
        assert cfg.output_dir == f"outputs/{profile}" and cfg.model_name.startswith(cfg.output_dir)
    else:
        assert cfg.model_name == "gpt2" and cfg.dataset_name == "stanfordnlp/sst2"


def test_every_field_is_explained_in_the_config_table():
    for cls in ALL_CONFIGS:
        table = ru.config_table(ru.make_config(cls, environ={}))
        assert list(table.index) == [f.name for f in dataclasses.fields(cls)]
        assert all(len(meaning) > 10 for meaning in table["meaning"]), cls


# ---------------------------------------------------------------------------
# RLHF_ variables


def test_env_values_are_parsed_to_the_field_types():
    env = {
        "RLHF_BATCH_SIZE": "64",
        "RLHF_MAX_TRAIN_SAMPLES": "1_000",
        "RLHF_LEARNING_RATE": "3e-4",
        "RLHF_NUM_EPOCHS": "2",
        "RLHF_LR_SCHEDULE": "linear",
        "RLHF_PUSH_TO_HUB": "yes",
        "RLHF_HUB_REPO_ID": "me/model",
        "RLHF_SEED": "1_000",
    }
    cfg = ru.make_config(ru.SFTConfig, environ=env)
    assert cfg.batch_size == 64 and type(cfg.batch_size) is int
    assert cfg.max_train_samples == 1000
    assert cfg.learning_rate == 3e-4 and type(cfg.learning_rate) is float
    assert cfg.num_epochs == 2.0 and type(cfg.num_epochs) is float
    assert cfg.lr_schedule == "linear" and cfg.hub_repo_id == "me/model" and cfg.seed == 1000
    assert cfg.push_to_hub is True


@pytest.mark.parametrize(
    "raw,value",
    [
        ("1", True),
        ("true", True),
        ("True", True),
        ("YES", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("No", False),
        (" off ", False),
    ],
)
def test_bool_spellings(raw, value):
    assert ru.make_config(ru.PPOConfig, environ={"RLHF_ADAPTIVE_KL": raw}).adaptive_kl is value


def test_edits_then_env_override():
    cfg = ru.make_config(ru.SFTConfig, environ={"RLHF_BATCH_SIZE": "8"}, batch_size=4, eval_every=7)
    assert cfg.batch_size == 8 and cfg.eval_every == 7
    with pytest.raises(ConfigError, match="no field"):
        ru.make_config(ru.SFTConfig, environ={}, kl_target=3.0)


def test_unknown_variable_suggests_the_close_name():
    with pytest.raises(ConfigError) as info:
        ru.make_config(ru.SFTConfig, environ={"RLHF_LEARNING_RAT": "1e-3"})
    assert str(info.value).startswith("RLHF_LEARNING_RAT is not a setting")
    assert "Did you mean RLHF_LEARNING_RATE" in str(info.value)
    with pytest.raises(ConfigError, match="RLHF_BATCHSIZE.*RLHF_BATCH_SIZE"):
        ru.make_config(ru.RMConfig, environ={"RLHF_BATCHSIZE": "8"})


@pytest.mark.parametrize(
    "name,raw", [("BATCH_SIZE", "many"), ("BATCH_SIZE", "3.0"), ("LEARNING_RATE", "fast"), ("PUSH_TO_HUB", "maybe")]
)
def test_unparsable_value_names_the_variable(name, raw):
    with pytest.raises(ConfigError) as info:
        ru.make_config(ru.SFTConfig, environ={f"RLHF_{name}": raw})
    assert f"RLHF_{name}" in str(info.value) and repr(raw) in str(info.value)


def test_field_of_another_notebook_is_accepted_but_not_applied():
    env = {"RLHF_KL_TARGET": "3", "RLHF_LOSS": "pairwise"}
    sft = ru.make_config(ru.SFTConfig, environ=env)
    assert not hasattr(sft, "kl_target") and not hasattr(sft, "loss")
    assert ru.make_config(ru.PPOConfig, environ=env).kl_target == 3.0
    assert ru.make_config(ru.RMConfig, environ=env).loss == "pairwise"


def test_model_and_dataset_aliases():
    cfg = ru.make_config(ru.SFTConfig, environ={"RLHF_MODEL": "/models/x", "RLHF_DATASET": "/data/y"})
    assert cfg.model_name == "/models/x" and cfg.dataset_name == "/data/y"
    with pytest.raises(ConfigError, match="RLHF_MODEL"):
        ru.make_config(ru.SFTConfig, environ={"RLHF_MODEL": "a", "RLHF_MODEL_NAME": "b"})


@pytest.mark.parametrize(
    "cls,env",
    [
        (ru.SFTConfig, {"RLHF_MAX_LENGTH": "4"}),
        (ru.SFTConfig, {"RLHF_MAX_LENGTH": "2048"}),
        (ru.SFTConfig, {"RLHF_LEARNING_RATE": "2"}),
        (ru.SFTConfig, {"RLHF_LEARNING_RATE": "nan"}),
        (ru.SFTConfig, {"RLHF_BATCH_SIZE": "0"}),
        (ru.SFTConfig, {"RLHF_WARMUP_RATIO": "1"}),
        (ru.SFTConfig, {"RLHF_LR_SCHEDULE": "exponential"}),
        (ru.SFTConfig, {"RLHF_PRECISION": "fp8"}),
        (ru.SFTConfig, {"RLHF_DEVICE": "tpu"}),
        (ru.SFTConfig, {"RLHF_PUSH_TO_HUB": "1"}),  # without a hub_repo_id
        (ru.RMConfig, {"RLHF_LOSS": "hinge"}),
        (ru.RMConfig, {"RLHF_BATCH_SIZE": "1"}),
        (ru.PPOConfig, {"RLHF_GAMMA": "1.5"}),
        (ru.PPOConfig, {"RLHF_LAM": "-0.1"}),
        (ru.PPOConfig, {"RLHF_CLIP_RANGE": "0"}),
        (ru.PPOConfig, {"RLHF_BATCH_SIZE": "100", "RLHF_MINIBATCH_SIZE": "64"}),
        (ru.PPOConfig, {"RLHF_PROMPT_MIN_TOKENS": "9", "RLHF_PROMPT_MAX_TOKENS": "8"}),
        (ru.PPOConfig, {"RLHF_KL_TARGET": "0"}),
    ],
)
def test_out_of_range_values_are_refused(cls, env):
    with pytest.raises(ConfigError):
        ru.make_config(cls, environ=env)


def test_output_dir_templating():
    cfg = ru.make_config(ru.PPOConfig, environ={"RLHF_OUTPUT_DIR": "/tmp/run7"})
    assert (cfg.sft_model_dir, cfg.reward_model_dir, cfg.policy_dir, cfg.checkpoint_dir) == (
        "/tmp/run7/sft_model",
        "/tmp/run7/reward_model",
        "/tmp/run7/ppo_policy",
        "/tmp/run7/ppo_checkpoint",
    )
    smoke = ru.make_config(ru.PPOConfig, environ={"RLHF_SMOKE": "1", "RLHF_OUTPUT_DIR": "runs/a"})
    assert smoke.model_name == "runs/a/base_model" and smoke.dataset_name == "runs/a/data/sst2"
    assert smoke.sft_model_dir == "runs/a/sft_model"
    assert ru.make_config(ru.PPOConfig, environ={}, output_dir="o2").policy_dir == "o2/ppo_policy"
    default = ru.make_config(ru.PPOConfig, environ={"RLHF_SMOKE": "1"})
    assert default.checkpoint_dir == "outputs/smoke/ppo_checkpoint"
    # a templated value given explicitly follows the output folder too
    own = ru.make_config(ru.PPOConfig, environ={"RLHF_OUTPUT_DIR": "x", "RLHF_POLICY_DIR": "{output_dir}/mine"})
    assert own.policy_dir == "x/mine"


def test_split_list():
    assert ru.split_list("2| 4 |8|", int) == [2, 4, 8]
    assert ru.split_list("the film|it 's a") == ["the film", "it 's a"]


# ---------------------------------------------------------------------------
# Precision and divergence checks


def test_resolve_precision_on_cpu():
    cpu = torch.device("cpu")
    full = ru.resolve_precision(cpu, "auto", profile="full")
    assert full.name == "fp32" and full.dtype is None and not full.use_grad_scaler
    assert not full.grad_scaler().is_enabled()
    assert ru.resolve_precision(cpu, "fp16").use_grad_scaler  # the T4's path, reachable on a CPU (tests/test_fp16.py)
    assert ru.resolve_precision(cpu, "bf16").dtype == torch.bfloat16
    assert ru.resolve_precision(cpu, "auto", profile="cpu").name == ("bf16" if cpu_supports_bf16() else "fp32")
    assert ru.resolve_device("cpu") == cpu


def test_check_finite_names_the_quantity_and_step():
    ru.stop_if_diverged("PPO", 3, loss=1.0, kl=-2.5)  # finite: no error
    with pytest.raises(TrainingDivergedError, match=r"value_loss.*\b17\b"):
        ru.stop_if_diverged("PPO", 17, policy_loss=0.1, value_loss=float("nan"))
    with pytest.raises(TrainingDivergedError, match=r"loss.*inf.*\b5\b"):
        ru.stop_if_diverged("SFT", 5, loss=math.inf)


# ---------------------------------------------------------------------------
# load_sst2 on local folders

ROWS = {
    "train": [
        {"sentence": "a gem ", "label": 1},
        {"sentence": "dull ", "label": 0},
        {"sentence": "it 's a mess ", "label": 0},
    ],
    "validation": [{"sentence": "charming ", "label": 1}, {"sentence": "a slog ", "label": 0}],
}


def write_split(folder, split, rows, fmt):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{split}.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "csv":
        pd.DataFrame(rows, columns=list(rows[0]) if rows else ["sentence", "label"]).to_csv(path, index=False)
    else:
        pd.DataFrame(rows, columns=list(rows[0]) if rows else ["sentence", "label"]).to_parquet(path)
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_load_sst2_from_local_files(tmp_path, fmt):
    for split, rows in ROWS.items():
        write_split(tmp_path, split, rows, fmt)
    dataset = ru.load_sst2(str(tmp_path))
    for split, rows in ROWS.items():
        assert dataset[split]["sentence"] == [r["sentence"] for r in rows]
        assert dataset[split]["label"] == [r["label"] for r in rows]


def test_load_sst2_reads_the_smoke_folder(smoke_dirs, smoke_rows):
    dataset = ru.load_sst2(str(smoke_dirs["data"]))
    assert dataset["validation"]["sentence"] == [r["sentence"] for r in smoke_rows["validation"]]


def broken(tmp_path, **splits):
    """Write each split given as (rows, fmt); returns the folder."""
    for split, (rows, fmt) in splits.items():
        write_split(tmp_path, split, rows, fmt)
    return tmp_path


@pytest.mark.parametrize(
    "make,pattern",
    [
        (lambda p: broken(p, train=(ROWS["train"], "jsonl")), r"no 'validation' file"),
        (
            lambda p: broken(
                p,
                train=([{"text": "a gem ", "label": 1}], "jsonl"),
                validation=([{"text": "dull ", "label": 0}], "jsonl"),
            ),
            r"no 'sentence' column",
        ),
        (
            lambda p: broken(
                p, train=([{"sentence": "a gem "}], "jsonl"), validation=([{"sentence": "dull "}], "jsonl")
            ),
            r"no 'label' column",
        ),
        (lambda p: broken(p, train=(ROWS["train"], "jsonl"), validation=([], "jsonl")), r"validation.*no rows"),
        (lambda p: broken(p, train=([], "csv"), validation=(ROWS["validation"], "csv")), r"train.*no rows"),
        (lambda p: broken(p, train=(ROWS["train"], "parquet"), validation=([], "parquet")), r"validation.*no rows"),
        (
            lambda p: broken(
                p,
                train=([{"sentence": "ok ", "label": 2}, {"sentence": "no ", "label": 0}], "jsonl"),
                validation=(ROWS["validation"], "jsonl"),
            ),
            r"labels \[0, 2\].*0/1",
        ),
        (
            lambda p: broken(
                p, train=(ROWS["train"], "jsonl"), validation=([{"sentence": "x ", "label": -1}], "jsonl")
            ),
            r"'validation' split has labels \[-1\]",
        ),
        (lambda p: broken(p, train=(ROWS["train"], "jsonl"), validation=(ROWS["validation"], "csv")), r"same format"),
        (lambda p: p / "does_not_exist", r"does not exist"),
    ],
)
def test_load_sst2_errors_name_the_problem(tmp_path, make, pattern):
    with pytest.raises(DatasetSchemaError, match=pattern):
        ru.load_sst2(str(make(tmp_path)))


def test_load_sst2_without_labels_for_sft(tmp_path):
    broken(tmp_path, train=([{"sentence": "a gem "}], "jsonl"), validation=([{"sentence": "dull "}], "jsonl"))
    assert ru.load_sst2(str(tmp_path), require_label=False)["train"]["sentence"] == ["a gem "]


def test_check_sst2_names_a_missing_split():
    import datasets

    only_train = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS["train"])})
    with pytest.raises(DatasetSchemaError, match=r"no 'validation' split"):
        validate_sst2(only_train)


# ---------------------------------------------------------------------------
# Tokenising, padding, labels, batches


def test_tokenize_sentences_appends_eos_and_cuts(tokenizer):
    sentences = ["the film is charming and witty . ", " dull", "a " * 40]
    rows = ru.tokenize_sentences(sentences, tokenizer, max_length=8)
    plain = tokenizer([s.strip() for s in sentences], add_special_tokens=False)["input_ids"]
    for row, ids in zip(rows, plain):
        assert row[-1] == tokenizer.eos_token_id and tokenizer.eos_token_id not in row[:-1]
        assert row[:-1] == ids[:7] and len(row) <= 8
    assert len(rows[2]) == 8  # the long one is cut to max_length, EOS included
    assert ru.tokenize_sentences(sentences, tokenizer, max_length=8, add_eos=False)[1] == plain[1]


def test_pad_batch_both_sides():
    ids, mask = ru.pad_batch([[5, 6, 7], [8]], pad_id=0, side="right")
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = ru.pad_batch([[5, 6, 7], [8]], pad_id=0, side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_lm_labels_keep_eos_although_pad_is_eos(tokenizer):
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # GPT-2's situation
    rows = ru.tokenize_sentences(["a gem", "the film is charming and witty ."], tokenizer, max_length=32)
    ids, mask = ru.pad_batch(rows, tokenizer.pad_token_id, side="right")
    labels = ru.lm_labels(ids, mask)
    eos = tokenizer.eos_token_id
    for i, row in enumerate(rows):
        assert labels[i, : len(row)].tolist() == row  # the EOS is a label
        assert (labels[i, len(row) :] == -100).all()  # the padding is not
    # masking by token id instead would drop every EOS label: the model would never learn to stop
    by_id = ids.masked_fill(ids == tokenizer.pad_token_id, -100)
    assert (labels == eos).sum() == len(rows) and (by_id == eos).sum() == 0


def padding(batches, lengths):
    return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)


@pytest.mark.parametrize("drop_last", [False, True])
def test_length_grouped_batches(tokenizer, smoke_rows, drop_last):
    sentences = [r["sentence"] for r in smoke_rows["train"][:1000]]
    lengths = [len(r) for r in ru.tokenize_sentences(sentences, tokenizer, 32)]
    batch_size = 16
    batches = ru.length_grouped_batches(
        lengths, batch_size, torch.Generator().manual_seed(0), group_factor=10, drop_last=drop_last
    )
    flat = sorted(i for b in batches for i in b)
    if drop_last:
        assert all(len(b) == batch_size for b in batches) and len(flat) == 1000 // batch_size * batch_size
        assert len(set(flat)) == len(flat)
    else:
        assert flat == list(range(len(lengths)))  # every index exactly once
        assert all(1 <= len(b) <= batch_size for b in batches)
    rng = random.Random(0)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    random_batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    assert padding(batches, lengths) < 0.5 * padding(random_batches, lengths)
    # the order is shuffled: not simply shortest first, and another seed gives other batches
    firsts = [max(lengths[i] for i in b) for b in batches]
    assert firsts != sorted(firsts)
    other = ru.length_grouped_batches(lengths, batch_size, torch.Generator().manual_seed(1), group_factor=10)
    assert other != batches


def test_make_prompts(tokenizer, smoke_rows):
    sentences = [r["sentence"] for r in smoke_rows["train"][:300]] + ["dull", "a gem"]
    prompts = ru.make_prompts(sentences, tokenizer, min_tokens=2, max_tokens=6, seed=0)
    full = ru.tokenize_sentences(sentences, tokenizer, max_length=10_000, add_eos=False)
    long_enough = [ids for ids in full if len(ids) >= 3]
    assert len(prompts) == len(long_enough)
    for prompt, ids in zip(prompts, long_enough):
        assert 2 <= len(prompt) <= 6 and len(prompt) < len(ids)
        assert prompt == ids[: len(prompt)]  # a prefix of its sentence
    assert len({len(p) for p in prompts}) == 5  # every length 2..6 occurs
    assert ru.make_prompts(sentences, tokenizer, 2, 6, seed=0) == prompts
    assert ru.make_prompts(sentences, tokenizer, 2, 6, seed=1) != prompts


def test_make_preference_pairs():
    rng = random.Random(3)
    labels = [rng.randrange(2) for _ in range(101)]
    pairs = ru.make_preference_pairs(labels, seed=0)
    assert len(pairs) == min(labels.count(0), labels.count(1))
    assert all(labels[c] == 1 and labels[r] == 0 for c, r in pairs)
    used = [i for pair in pairs for i in pair]
    assert len(used) == len(set(used))
    assert ru.make_preference_pairs(labels, seed=0) == pairs and ru.make_preference_pairs(labels, seed=1) != pairs


# ---------------------------------------------------------------------------
# The smoke data


def test_make_smoke_sst2():
    data = smoke_data.make_smoke_sst2(n_train=400, n_validation=100, seed=5)
    assert data == smoke_data.make_smoke_sst2(n_train=400, n_validation=100, seed=5)  # deterministic
    assert data != smoke_data.make_smoke_sst2(n_train=400, n_validation=100, seed=6)
    seen = set()
    for split, n in (("train", 400), ("validation", 100)):
        rows = data[split]
        assert len(rows) == n and [r["idx"] for r in rows] == list(range(n))
        assert sum(r["label"] for r in rows) == n // 2  # balanced
        labels = [r["label"] for r in rows]
        assert labels != sorted(labels)  # shuffled
        for r in rows:
            s = r["sentence"]
            assert s == s.lower() and s.endswith(" ") and not s.endswith("  ") and not s.startswith(" ")
            assert "  " not in s and smoke_data.MIN_WORDS <= len(s.split()) <= smoke_data.MAX_WORDS
            assert s not in seen  # no duplicates, so no validation sentence is in train
            seen.add(s)


def test_build_smoke_dataset_writes_a_verified_folder(smoke_dirs, smoke_rows):
    folder = smoke_dirs["data"]
    meta = ru.verify_checkpoint(folder)
    assert meta["kind"] == "smoke_sst2"
    lines = (folder / "train.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == smoke_rows["train"]


def test_importing_the_series_probes_nothing_and_changes_no_environment_variable():
    """The hub check runs when a model or dataset is first loaded, not at import."""
    script = textwrap.dedent("""
        import json, os, socket, sys
        sys.path.insert(0, sys.argv[1])
        calls = []
        socket.create_connection = lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(OSError("no network"))
        before = dict(os.environ)
        import rlhf_utils, rlhf_support.hub
        print(json.dumps({"calls": len(calls), "changed": sorted(set(os.environ.items()) ^ set(before.items()))}))
        rlhf_support.hub.hub_online()  # the first load asks, once
        import huggingface_hub.constants
        print(json.dumps({"calls": len(calls), "offline": huggingface_hub.constants.HF_HUB_OFFLINE}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    done = subprocess.run([sys.executable, "-c", script, str(ROOT)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    at_import, after = (json.loads(line) for line in done.stdout.splitlines()[-2:])
    assert at_import == {"calls": 0, "changed": []}
    assert after == {"calls": 1, "offline": True}  # unreachable: the libraries are switched to offline mode
