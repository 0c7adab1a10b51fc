"""Checkpoints: atomic saves and manifests, saves killed at any instant, folders that cannot be written, runs
that ended worse than they started, model round trips, and Google Drive's ways of failing."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import under_a_file

import rlhf_utils as ru
from rlhf_support import checkpoints, data, errors, profiles
from rlhf_support.checkpoints import STALE_ELSEWHERE_S, atomic_directory, host_id, make_writable_folder
from rlhf_support.errors import TrainingDivergedError
from rlhf_support.guards import failed_run_reasons

# ---------------------------------------------------------------------------
# A folder that cannot be written fails before training


def test_check_writable_fails_early_with_a_message(tmp_path):
    assert make_writable_folder(tmp_path / "new" / "folder").is_dir()
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ru.CheckpointError, match="RLHF_OUTPUT_DIR"):
        make_writable_folder(blocker / "outputs")


# ---------------------------------------------------------------------------
# A non-finite value stops training, naming the quantity and the step


def test_check_finite_names_the_quantity_and_step():
    ru.stop_if_diverged("PPO", 3, loss=1.0, kl=-2.5)  # finite: no error
    with pytest.raises(TrainingDivergedError, match=r"value_loss.*\b17\b"):
        ru.stop_if_diverged("PPO", 17, policy_loss=0.1, value_loss=float("nan"))
    with pytest.raises(TrainingDivergedError, match=r"loss.*inf.*\b5\b"):
        ru.stop_if_diverged("SFT", 5, loss=math.inf)


# ---------------------------------------------------------------------------
# Saves killed at any instant, unwritable folders, runs that ended worse than they started


ROOT = Path(__file__).resolve().parents[1]


NOTEBOOKS = ["1-SFT.ipynb", "2-RM Training.ipynb", "3-RLHF.ipynb"]


KILLED_SAVE = textwrap.dedent("""
    import json, os, shutil, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from rlhf_support.checkpoints import atomic_directory
    folder, stage = Path(sys.argv[1]), sys.argv[2]
    counts = {}

    def die_at(name, real):
        def wrapper(*args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            if stage == f"{name}{counts[name]}":
                os._exit(9)  # a kill: no cleanup, no exception handlers
            return real(*args, **kwargs)
        return wrapper

    Path.rename = die_at("rename", Path.rename)
    json.dump = die_at("manifest", json.dump)
    shutil.rmtree = die_at("rmtree", shutil.rmtree)
    with atomic_directory(folder, {"version": "new"}) as tmp:
        (tmp / "weights.bin").write_bytes(b"new" * 50_000)
        if stage == "writing":
            os._exit(9)
        (tmp / "config.json").write_text("{}")
    print("finished")
""")


# (stage, how many versions were saved before, which version a loader must find afterwards). With two before, the
# save reuses the spare (*.old): rename1 takes it as the temporary folder, rename2 moves the current version to *.old,
# rename3 the new one into place. With one before, there is no spare yet: rename1 and rename2 are the last two.
KILL_POINTS = [
    ("writing", 1, "old"),
    ("manifest1", 1, "old"),
    ("rename1", 1, "old"),
    ("rename2", 1, "new"),  # between the two renames: no folder at the final path (the reported case)
    ("none", 1, "new"),
    ("writing", 0, None),
    ("manifest1", 0, None),
    ("rename1", 0, "new"),
    ("rename1", 2, "old"),
    ("writing", 2, "old"),
    ("manifest1", 2, "old"),
    ("rename2", 2, "old"),
    ("rename3", 2, "new"),
    ("none", 2, "new"),
]


def kill_save(folder: Path, stage: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", KILLED_SAVE, str(folder), stage, str(ROOT)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert (done.returncode == 9) == (stage != "none"), done.stderr


@pytest.mark.parametrize("stage,saved_before,expected", KILL_POINTS)
def test_a_save_killed_at_any_instant_leaves_a_complete_version(tmp_path, stage, saved_before, expected):
    folder = tmp_path / "sft_model"
    for _ in range(saved_before):
        with atomic_directory(folder, {"version": "old"}) as tmp:
            (tmp / "weights.bin").write_bytes(b"old" * 50_000)
    kill_save(folder, stage)
    if expected is None:
        with pytest.raises(ru.CheckpointError, match="No checkpoint"):
            ru.verify_checkpoint(folder)
    else:
        assert ru.verify_checkpoint(folder)["version"] == expected  # recovered, then verified
        assert (folder / "weights.bin").read_bytes()[:3] == expected.encode()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert set(left) <= {"sft_model", "sft_model.old"} and ("sft_model" in left) == bool(expected), (
        left
    )  # no temporaries
    with atomic_directory(folder, {"version": "next"}) as tmp:  # and the next save works from what is left
        (tmp / "weights.bin").write_bytes(b"next")
    assert ru.verify_checkpoint(folder)["version"] == "next"


def test_the_ppo_notebook_finds_an_sft_model_whose_save_was_killed_between_the_renames(tmp_path):
    for name in ("sft_model", "reward_model"):
        with atomic_directory(tmp_path / name, {"version": "old"}) as tmp:
            (tmp / "weights.bin").write_bytes(b"old")
    kill_save(tmp_path / "sft_model", "rename2")
    assert not (tmp_path / "sft_model").exists()
    ru.find_ppo_inputs(ru.make_config(ru.PPOConfig, {"RLHF_OUTPUT_DIR": str(tmp_path)}))  # no "run 1-SFT.ipynb first"
    assert ru.verify_checkpoint(tmp_path / "sft_model", deep=True)["version"] == "new"


def test_stale_temporary_folders_are_removed_by_the_next_save(tmp_path):
    folder = tmp_path / "ckpt"
    for stage in ("writing", "manifest1", "writing"):
        kill_save(folder, stage)  # each new save first removes what the dead writer before it left
    assert len(list(tmp_path.glob("ckpt.tmp-*"))) == 1  # only the last dead writer's folder
    with atomic_directory(folder, {"version": "next"}) as tmp:
        (tmp / "weights.bin").write_bytes(b"next")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_running_writers_temporary_folder_is_left_alone(tmp_path):
    for busy in (tmp_path / f"ckpt.tmp-{os.getppid()}", tmp_path / f"ckpt.tmp-{host_id()}-{os.getppid()}"):
        busy.mkdir()  # a live process on this machine (our parent), in the old and the new naming
        ru.recover_checkpoint(tmp_path / "ckpt")
        assert busy.exists()


def test_another_runtimes_save_in_progress_is_left_alone_until_it_is_long_untouched(tmp_path):
    """Two Colab runtimes share the Drive folder: a process id from another machine says nothing here."""
    elsewhere = tmp_path / "ckpt.tmp-another_runtime-1"  # pid 1 runs here too, so the id alone would not tell
    elsewhere.mkdir()
    (elsewhere / "weights.bin").write_bytes(b"half")
    ru.recover_checkpoint(tmp_path / "ckpt")
    assert elsewhere.exists()
    long_ago = time.time() - STALE_ELSEWHERE_S - 60
    for path in (elsewhere / "weights.bin", elsewhere):
        os.utime(path, (long_ago, long_ago))
    ru.recover_checkpoint(tmp_path / "ckpt")
    assert not elsewhere.exists() and (tmp_path / "ckpt.old").is_dir()  # the runtime is gone: its folder is the spare


@pytest.mark.parametrize("setting", ["output_dir", "figures_dir", "checkpoint_dir", "policy_dir"])
def test_unwritable_folders_are_found_before_training_and_name_their_setting(tmp_path, setting):
    cfg = ru.make_config(ru.PPOConfig, {"RLHF_OUTPUT_DIR": str(tmp_path / "out")})
    ru.make_output_folders(cfg)  # all writable: no error
    bad = under_a_file(tmp_path)
    value = bad if setting in ("output_dir", "figures_dir") else bad + "/leaf"
    cfg = ru.make_config(ru.PPOConfig, {"RLHF_OUTPUT_DIR": str(tmp_path / "out"), f"RLHF_{setting.upper()}": value})
    with pytest.raises(ru.CheckpointError, match=f"RLHF_{setting.upper()}"):
        ru.make_output_folders(cfg)


def test_run_problems_sees_a_run_that_ended_worse():
    assert failed_run_reasons([6.9, 4.0, 3.0, 2.95], higher_is_better=False, margin=0.1) == []
    assert "ended worse than it started" in failed_run_reasons([6.9, 42.5, 7.3], False, 0.1)[0]
    assert failed_run_reasons([6.9, 6.95], False, 0.1) == []  # within the margin: noise, not divergence
    assert "far from its best" in failed_run_reasons([6.9, 3.0, 5.4], False, 0.1)[0]
    assert "already saved" in failed_run_reasons([6.9, 5.4], False, 0.1, saved=2.94)[0]
    assert failed_run_reasons([6.9, 5.4], False, 0.1, saved=5.45) == []  # a little worse than the saved one is fine
    assert failed_run_reasons([0.5, 0.9, 0.89], higher_is_better=True, margin=0.02) == []
    assert "far from its best" in failed_run_reasons([0.5, 0.9, 0.6], True, 0.02)[0]


def save_marker(value: str):
    def save(folder: str) -> None:
        with atomic_directory(
            folder, {"validation": {"metric": "validation loss", "value": value, "data": "d1"}}
        ) as tmp:
            (tmp / "weights.bin").write_text(str(value))

    return save


def test_a_diverged_run_does_not_replace_the_saved_model(tmp_path):
    folder = str(tmp_path / "sft_model")
    ru.save_unless_worse(save_marker(2.94), folder, "validation loss", [6.9, 2.94], False, 0.1, data="d1")
    # RLHF_LEARNING_RATE=0.99: the loss rose to 42.5 and ended at 5.375, never NaN
    with pytest.raises(ru.RLHFError, match="sft_model.rejected") as error:
        ru.save_unless_worse(save_marker(5.375), folder, "validation loss", [6.9, 42.5, 5.375], False, 0.1, data="d1")
    assert "already saved there scored 2.94" in str(error.value) and "RLHF_SAVE_WORSE_MODEL" in str(error.value)
    assert (Path(folder) / "weights.bin").read_text() == "2.94"  # the better model stays
    assert (Path(folder + ".rejected") / "weights.bin").read_text() == "5.375"  # and nothing trained is lost
    # measured on other validation data, the saved value does not count; asked to, it saves anyway
    ru.save_unless_worse(save_marker(5.375), folder, "validation loss", [6.9, 5.375], False, 0.1, data="d2")
    ru.save_unless_worse(
        save_marker(9.0), folder, "validation loss", [6.9, 9.0], False, 0.1, data="d1", save_worse=True
    )
    assert (Path(folder) / "weights.bin").read_text() == "9.0"


# ---------------------------------------------------------------------------
# Atomic saves, manifests, model round trips, and Google Drive's ways of failing


def write_checkpoint(folder, text: str, meta=None):
    with checkpoints.atomic_directory(folder, meta) as tmp:
        (tmp / "weights.bin").write_bytes(text.encode() * 100)
        (tmp / "sub").mkdir(exist_ok=True)  # a save may find the spare's (emptied) folders there
        (tmp / "sub" / "notes.txt").write_text(text)


def leftovers(folder):
    return sorted(p.name for p in folder.parent.iterdir() if p.name != folder.name)


def test_atomic_directory_writes_a_manifest_and_replaces_the_old_checkpoint(tmp_path):
    folder = tmp_path / "ckpt"
    write_checkpoint(folder, "first", meta={"step": 1})
    assert ru.verify_checkpoint(folder) == {"step": 1}
    manifest = json.loads((folder / checkpoints.MANIFEST).read_text())
    assert set(manifest["files"]) == {"weights.bin", "sub/notes.txt"}
    first_inode = (folder / "weights.bin").stat().st_ino
    write_checkpoint(folder, "second", meta={"step": 2})
    assert ru.verify_checkpoint(folder) == {"step": 2}
    assert (folder / "sub" / "notes.txt").read_text() == "second"
    spare = folder.with_name("ckpt.old")
    assert leftovers(folder) == ["ckpt.old"] and ru.verify_checkpoint(spare, recover=False) == {"step": 1}
    # the third save overwrites the spare's files in place (on Drive: the same files, nothing sent to the Trash)
    write_checkpoint(folder, "third", meta={"step": 3})
    assert ru.verify_checkpoint(folder) == {"step": 3} and (folder / "weights.bin").stat().st_ino == first_inode
    assert leftovers(folder) == ["ckpt.old"] and ru.verify_checkpoint(spare, recover=False) == {"step": 2}


def test_a_file_of_the_spare_that_the_next_save_does_not_write_is_dropped(tmp_path):
    folder = tmp_path / "ckpt"
    write_checkpoint(folder, "first")
    write_checkpoint(folder, "second")
    with checkpoints.atomic_directory(folder, {"step": 3}) as tmp:  # the spare ("first") had sub/notes.txt too
        (tmp / "weights.bin").write_bytes(b"only this")
    manifest = json.loads((folder / checkpoints.MANIFEST).read_text())
    assert set(manifest["files"]) == {"weights.bin"} and not (folder / "sub" / "notes.txt").exists()
    assert ru.verify_checkpoint(folder) == {"step": 3}


def test_atomic_directory_keeps_the_previous_checkpoint_when_writing_fails(tmp_path):
    folder = tmp_path / "ckpt"
    write_checkpoint(folder, "good", meta={"step": 10})
    before = {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    with pytest.raises(RuntimeError, match="disk full"):
        with checkpoints.atomic_directory(folder, {"step": 11}) as tmp:
            (tmp / "weights.bin").write_bytes(b"half")
            raise RuntimeError("disk full")
    assert ru.verify_checkpoint(folder) == {"step": 10}
    assert {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    assert leftovers(folder) == ["ckpt.old"]  # the emptied folder stays as the spare the next save writes into
    write_checkpoint(folder, "next", meta={"step": 11})
    assert ru.verify_checkpoint(folder) == {"step": 11} and leftovers(folder) == ["ckpt.old"]
    # an interrupted first save leaves no folder at all, not a half-written one
    with pytest.raises(KeyboardInterrupt):
        with checkpoints.atomic_directory(tmp_path / "new") as tmp:
            (tmp / "x").write_text("x")
            raise KeyboardInterrupt
    assert not (tmp_path / "new").exists()


def test_verify_checkpoint_refuses_changed_truncated_and_missing_files(tmp_path):
    folder = tmp_path / "ckpt"
    write_checkpoint(folder, "abc")
    weights = folder / "weights.bin"
    original = weights.read_bytes()

    weights.write_bytes(original[:-7])  # truncated
    with pytest.raises(ru.CheckpointError, match="weights.bin"):
        ru.verify_checkpoint(folder)
    with pytest.raises(ru.CheckpointError):
        ru.verify_checkpoint(folder, deep=False)  # the size alone shows it

    weights.write_bytes(b"X" + original[1:])  # same size, other bytes
    with pytest.raises(ru.CheckpointError, match="corrupt or was changed"):
        ru.verify_checkpoint(folder)
    assert ru.verify_checkpoint(folder, deep=False) == {}  # a shallow check only compares sizes

    weights.write_bytes(original)
    ru.verify_checkpoint(folder)
    (folder / "sub" / "notes.txt").unlink()  # missing
    with pytest.raises(ru.CheckpointError, match="notes.txt"):
        ru.verify_checkpoint(folder)

    with pytest.raises(ru.CheckpointError, match="No checkpoint"):
        ru.verify_checkpoint(tmp_path / "nothing_here")


def test_verify_checkpoint_refuses_a_damaged_manifest_or_an_interrupted_save(tmp_path):
    folder = tmp_path / "ckpt"
    write_checkpoint(folder, "abc")
    (folder / checkpoints.MANIFEST).write_text("{not json")
    with pytest.raises(ru.CheckpointError, match="damaged"):
        ru.verify_checkpoint(folder)
    # a folder without any manifest (saved elsewhere with save_pretrained) is accepted as it is ...
    (folder / checkpoints.MANIFEST).unlink()
    assert ru.verify_checkpoint(folder) == {}
    # a stale temporary folder of a save whose process is gone becomes the spare on the way
    (tmp_path / "ckpt.tmp-999999999").mkdir()
    assert ru.verify_checkpoint(folder) == {} and leftovers(folder) == ["ckpt.old"]
    # ... but a save in progress beside a folder without a manifest (another runtime's) may be half-done
    (tmp_path / "ckpt.tmp-another_runtime-12").mkdir()
    with pytest.raises(ru.CheckpointError, match="half-written"):
        ru.verify_checkpoint(folder)


def test_save_and_load_causal_lm(tmp_path, tiny_lm, tokenizer):
    folder = ru.save_causal_lm(tiny_lm, tokenizer, tmp_path / "sft", meta={"steps": 3})
    meta = ru.verify_checkpoint(folder)
    assert meta["kind"] == "causal_lm" and meta["steps"] == 3
    assert meta["vocabulary"] == checkpoints.vocabulary_fingerprint(tokenizer)
    loaded = ru.load_causal_lm(str(folder)).eval()
    loaded_tokenizer = ru.load_tokenizer(str(folder))
    ru.require_same_vocabulary(tokenizer, loaded_tokenizer)
    ids = torch.tensor([ru.tokenize_sentences(["the film is charming"], tokenizer, 16)[0]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, tiny_lm(input_ids=ids).logits, atol=1e-6, rtol=0)
    assert not any(p.name.endswith(".bin") for p in folder.iterdir())  # safetensors, not pickles


def test_load_causal_lm_refuses_a_corrupt_folder(tmp_path, tiny_lm, tokenizer):
    folder = ru.save_causal_lm(tiny_lm, tokenizer, tmp_path / "sft")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ru.CheckpointError, match="model.safetensors"):
        ru.load_causal_lm(str(folder))


@pytest.fixture
def saved_reward_model(tmp_path, smoke_dirs, tokenizer):
    torch.manual_seed(0)
    model = ru.build_reward_model(str(smoke_dirs["base"])).eval()
    folder = ru.save_reward_model(
        model, tokenizer, tmp_path / "rm", score_mean=0.25, score_std=1.5, threshold=-0.75, meta={"loss": "bce"}
    )
    return model, folder


def test_save_and_load_reward_model(saved_reward_model, tokenizer):
    model, folder = saved_reward_model
    loaded, loaded_tokenizer, info = ru.load_reward_model(folder)
    assert not loaded.training
    assert info["score_mean"] == 0.25 and info["score_std"] == 1.5 and info["loss"] == "bce"
    assert info["threshold"] == -0.75
    assert info["layout"] == ru.REWARD_MODEL_LAYOUT
    ru.require_same_vocabulary(tokenizer, loaded_tokenizer)
    rows = ru.tokenize_sentences(["a gem", "the film is dull and lifeless ."], tokenizer, 32)
    ids, mask = ru.pad_batch(rows, tokenizer.pad_token_id)
    with torch.no_grad():
        expected = model.score(ids, mask)
        torch.testing.assert_close(loaded.score(ids, mask), expected, atol=1e-6, rtol=0)
    assert expected.abs().max() > 1e-3  # the head is not zero: the comparison means something


def test_load_reward_model_refuses_other_folders(tmp_path, saved_reward_model, tiny_lm, tokenizer):
    _, good = saved_reward_model
    # a causal LM folder (e.g. RLHF_REWARD_MODEL_DIR pointed at the SFT model): no reward_config.json
    lm_folder = ru.save_causal_lm(tiny_lm, tokenizer, tmp_path / "sft")
    with pytest.raises(ru.CheckpointError, match=r"no reward_config.json.*older layout"):
        ru.load_reward_model(lm_folder)
    # a reward model saved in another layout
    info = json.loads((good / ru.REWARD_CONFIG).read_text())
    with checkpoints.atomic_directory(tmp_path / "rm_v99") as tmp:
        for path in good.iterdir():
            if path.is_file() and path.name not in (checkpoints.MANIFEST, ru.REWARD_CONFIG):
                shutil.copy(path, tmp / path.name)
        (tmp / ru.REWARD_CONFIG).write_text(json.dumps({**info, "layout": 99}))
    with pytest.raises(ru.CheckpointError, match="layout 99"):
        ru.load_reward_model(tmp_path / "rm_v99")
    with pytest.raises(ru.CheckpointError, match="2-RM Training"):
        ru.load_reward_model(tmp_path / "missing")


def test_a_saved_reward_model_with_a_flipped_byte_or_an_old_layout_is_refused(tmp_path, saved_reward_model):
    """What notebook 2 used to demonstrate in a cell: damage and an older layout are caught on load."""
    _, good = saved_reward_model
    damaged = shutil.copytree(good, tmp_path / "damaged")
    with open(damaged / "model.safetensors", "r+b") as f:  # flip the last byte of the weights
        f.seek(-1, os.SEEK_END)
        last = f.read(1)[0]
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last ^ 0xFF]))
    with pytest.raises(ru.CheckpointError, match="model.safetensors does not match its manifest"):
        ru.load_reward_model(damaged)
    old = shutil.copytree(good, tmp_path / "old_layout")
    (old / checkpoints.MANIFEST).unlink()  # like a folder an older version wrote: no manifest, layout 1, no threshold
    info = json.loads((old / ru.REWARD_CONFIG).read_text())
    info.pop("threshold")
    (old / ru.REWARD_CONFIG).write_text(json.dumps({**info, "layout": 1}))
    with pytest.raises(ru.CheckpointError, match="layout 1.*Re-run 2-RM Training.ipynb"):
        ru.load_reward_model(old)


def test_check_sst2_refuses_labels_other_than_0_1_and_a_missing_label_column():
    import datasets

    bad = datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict({"sentence": ["great fun", "dull"], "label": [4, 0]})
            for split in ("train", "validation")
        }
    )
    with pytest.raises(errors.DatasetSchemaError, match=r"labels \[0, 4\]"):
        data.validate_sst2(bad)
    no_labels = datasets.DatasetDict(
        {split: datasets.Dataset.from_dict({"sentence": ["great fun"]}) for split in ("train", "validation")}
    )
    with pytest.raises(errors.DatasetSchemaError, match="no 'label' column"):
        data.validate_sst2(no_labels)


def test_check_same_vocabulary_refuses_another_tokenizer(tokenizer, smoke_rows):
    other = profiles.train_bpe_tokenizer(
        [r["sentence"] for r in smoke_rows["train"][:300]], vocab_size=400, max_length=64
    )
    with pytest.raises(ru.CheckpointError, match="vocabulary"):
        ru.require_same_vocabulary(tokenizer, other)
    ru.require_same_vocabulary(tokenizer, tokenizer)


HUB_NAME = "rlhf-in-notebooks/no-such-model"  # a hub id (not a path) that no cache holds


@pytest.mark.skipif(
    os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes", "on"),
    reason="checks the offline error; HF_HUB_OFFLINE is not set",
)
@pytest.mark.parametrize(
    "load",
    [ru.load_causal_lm, ru.load_tokenizer, ru.build_reward_model, ru.load_sst2],
    ids=["causal_lm", "tokenizer", "reward_trunk", "dataset"],
)
def test_hub_name_offline_fails_fast_with_a_helpful_message(load):
    start = time.perf_counter()
    with pytest.raises(errors.HubUnavailableError) as info:
        load(HUB_NAME)
    elapsed = time.perf_counter() - start
    message = str(info.value)
    assert HUB_NAME in message and "RLHF_PROFILE=smoke" in message and "internet" in message
    assert elapsed < 5.0, f"took {elapsed:.1f} s"


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """huggingface_hub's upload and download, backed by a folder: repo 'a/b' lives in hub/a/b."""
    import huggingface_hub

    hub = tmp_path / "hub"

    def upload_folder(self, folder_path, repo_id, **kwargs):
        shutil.copytree(folder_path, hub / repo_id, dirs_exist_ok=True)

    def snapshot_download(repo_id, **kwargs):
        if not (hub / repo_id).is_dir():
            import httpx
            from huggingface_hub.errors import RepositoryNotFoundError

            raise RepositoryNotFoundError(
                f"{repo_id} not found",
                response=httpx.Response(
                    404, request=httpx.Request("GET", f"https://huggingface.co/api/models/{repo_id}")
                ),
            )
        cache = tmp_path / "cache" / repo_id.replace("/", "--")
        shutil.copytree(hub / repo_id, cache, dirs_exist_ok=True)
        return str(cache)

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_fake")
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, exist_ok=True: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return hub


def test_the_reward_model_round_trips_through_the_hub(tmp_path, fake_hub, saved_reward_model, tiny_lm, tokenizer):
    model, folder = saved_reward_model
    ru.push_folder_to_hub(folder, "me/gpt2-sst2-reward")
    sft = ru.save_causal_lm(tiny_lm, tokenizer, tmp_path / "out" / "sft_model")
    cfg = ru.make_config(
        ru.PPOConfig, {"RLHF_OUTPUT_DIR": str(tmp_path / "out"), "RLHF_REWARD_MODEL_DIR": "me/gpt2-sst2-reward"}
    )
    sft_path, reward_path = ru.find_ppo_inputs(cfg)
    assert sft_path == sft and reward_path != folder and reward_path.is_dir()  # fetched, not the local original
    loaded, _, info = ru.load_reward_model(reward_path)  # verified against the manifest that travelled with it
    assert (info["score_mean"], info["score_std"], info["threshold"]) == (0.25, 1.5, -0.75)
    ids, mask = ru.pad_batch(ru.tokenize_sentences(["a gem", "a dull mess"], tokenizer, 32), tokenizer.pad_token_id)
    with torch.no_grad():
        torch.testing.assert_close(loaded.score(ids, mask), model.score(ids, mask), atol=1e-6, rtol=0)
    missing = ru.make_config(
        ru.PPOConfig, {"RLHF_OUTPUT_DIR": str(tmp_path / "out"), "RLHF_REWARD_MODEL_DIR": "me/nothing"}
    )
    with pytest.raises(
        ru.CheckpointError, match="no reward model 'me/nothing' on the Hugging Face hub.*RLHF_REWARD_MODEL_DIR"
    ):
        ru.find_ppo_inputs(missing)


def test_a_hub_input_without_a_connection_names_the_setting_to_change(tmp_path, tiny_lm, tokenizer):
    ru.save_causal_lm(tiny_lm, tokenizer, tmp_path / "sft_model")
    cfg = ru.make_config(ru.PPOConfig, {"RLHF_OUTPUT_DIR": str(tmp_path), "RLHF_REWARD_MODEL_DIR": "me/not-cached"})
    with pytest.raises(
        errors.HubUnavailableError, match="Could not fetch the reward model 'me/not-cached'.*RLHF_REWARD_MODEL_DIR"
    ):
        ru.find_ppo_inputs(cfg)  # HF_HUB_OFFLINE=1 in the tests: the hub cannot be reached


def test_a_model_still_uploading_from_another_runtime_says_wait_and_keeps_the_previous_version(tmp_path):
    folder = tmp_path / "sft_model"
    write_checkpoint(folder, "first", meta={"step": 1})
    write_checkpoint(folder, "second", meta={"step": 2})  # the previous complete version is the spare, ckpt.old
    weights = folder / "weights.bin"
    full = weights.read_bytes()
    weights.write_bytes(full[: len(full) // 2])  # what this runtime sees while another one's upload is under way
    with pytest.raises(ru.CheckpointError, match="upload may still be under way: wait a few minutes") as short:
        ru.verify_checkpoint(folder)
    assert "shorter than its manifest says" in str(short.value)
    weights.unlink()
    with pytest.raises(ru.CheckpointError, match="is missing.*upload may still be under way"):
        ru.verify_checkpoint(folder)
    assert ru.verify_checkpoint(folder.with_name("sft_model.old"), recover=False) == {"step": 1}  # kept
    weights.write_bytes(full)  # the upload finished: the same cell now works
    assert ru.verify_checkpoint(folder) == {"step": 2}


@pytest.mark.parametrize("errno_value", [107, 5])
def test_a_drive_that_disconnects_during_a_save_is_named_as_such(tmp_path, errno_value):
    folder = tmp_path / "ckpt"
    write_checkpoint(folder, "good", meta={"step": 1})
    with pytest.raises(ru.CheckpointError, match=f"Google Drive disconnecting \\(errno {errno_value}\\)"):
        with checkpoints.atomic_directory(folder, {"step": 2}):
            raise OSError(errno_value, os.strerror(errno_value))
    assert ru.verify_checkpoint(folder) == {"step": 1}
    with pytest.raises(ru.CheckpointError) as other:
        with checkpoints.atomic_directory(folder, {"step": 2}):
            raise OSError(28, os.strerror(28))  # a full disk is not a disconnect
    assert "Drive disconnecting" not in str(other.value) and "previous version" in str(other.value)


def test_a_spare_that_cannot_be_removed_never_fails_a_save(tmp_path, monkeypatch):
    folder = tmp_path / "ckpt"
    write_checkpoint(folder, "first", meta={"step": 1})

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(shutil, "rmtree", refuse)
    with checkpoints.atomic_directory(folder, {"step": 2}) as tmp:
        (tmp / "weights.bin").write_bytes(b"new")
        spare = folder.with_name("ckpt.old")  # another runtime leaves a spare meanwhile
        spare.mkdir()
        (spare / "theirs.bin").write_bytes(b"x")
    assert ru.verify_checkpoint(folder) == {"step": 2}
    assert ru.verify_checkpoint(folder.with_name("ckpt.old"), recover=False) == {"step": 1}
    assert len(list(tmp_path.glob("ckpt.old-set-aside-*"))) == 1


def test_manifest_times_sort_like_the_clock_across_a_second(monkeypatch):
    """Recovery keeps the newest complete version by its manifest's time: one reading gives seconds and fraction."""
    readings = iter([1_700_000_000 * 10**9 + 999_999_999, 1_700_000_001 * 10**9 + 1])
    monkeypatch.setattr(time, "time_ns", lambda: next(readings))
    earlier, later = checkpoints._timestamp(), checkpoints._timestamp()
    assert earlier < later and earlier.endswith(".999999999") and later.endswith(".000000001")
