"""What the fault-injection round found (issue 15), each with a test that fails without its fix:
saves killed at every instant, folders that cannot be written, runs that diverge without a NaN,
data files that do not parse, and a validation rule for every field of the three configs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import textwrap
import time
import typing
from pathlib import Path

import pytest

import rlhf_utils as ru
from rlhf_support.checkpoints import STALE_ELSEWHERE_S, atomic_directory, host_id
from rlhf_support.config import ALL_CONFIGS
from rlhf_support.errors import ConfigError, DatasetSchemaError
from rlhf_support.guards import failed_run_reasons

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["1-SFT.ipynb", "2-RM Training.ipynb", "3-RLHF.ipynb"]


# ---------------------------------------------------------------------------
# A save killed at any instant leaves a complete version, old or new, where the loaders look

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


# ---------------------------------------------------------------------------
# Folders that cannot be written: found before training, named by their own setting


def under_a_file(tmp_path: Path) -> str:
    (tmp_path / "a_file").write_text("not a folder")
    return str(tmp_path / "a_file" / "sub")


@pytest.mark.parametrize("setting", ["output_dir", "figures_dir", "checkpoint_dir", "policy_dir"])
def test_unwritable_folders_are_found_before_training_and_name_their_setting(tmp_path, setting):
    cfg = ru.make_config(ru.PPOConfig, {"RLHF_OUTPUT_DIR": str(tmp_path / "out")})
    ru.make_output_folders(cfg)  # all writable: no error
    bad = under_a_file(tmp_path)
    value = bad if setting in ("output_dir", "figures_dir") else bad + "/leaf"
    cfg = ru.make_config(ru.PPOConfig, {"RLHF_OUTPUT_DIR": str(tmp_path / "out"), f"RLHF_{setting.upper()}": value})
    with pytest.raises(ru.CheckpointError, match=f"RLHF_{setting.upper()}"):
        ru.make_output_folders(cfg)


def test_every_notebook_checks_its_folders_before_it_trains():
    nbformat = pytest.importorskip("nbformat")
    for name in NOTEBOOKS:
        cells = [c.source for c in nbformat.read(ROOT / name, as_version=4).cells if c.cell_type == "code"]
        check = next(i for i, source in enumerate(cells) if "ru.make_output_folders(cfg)" in source)
        first_training = next(
            i for i, source in enumerate(cells) if "optimizer_step" in source or "train_reward_model(" in source
        )
        assert check < first_training, name


def test_a_figure_that_cannot_be_saved_is_reported_not_raised(tmp_path, capsys):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, _ = plt.subplots()
    assert ru.save_figure(fig, under_a_file(tmp_path), "sft_loss") is None
    plt.close(fig)
    assert "Could not save the figure" in capsys.readouterr().out


# ---------------------------------------------------------------------------
# Runs that diverge without a NaN are not saved over a better model


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
# Raw errors replaced by ones that say what is wrong and where


def test_a_malformed_json_line_names_the_file_and_the_line(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"sentence": "a gem ", "label": 1}\n{"sentence": "dull , "label": 0}\n')
    (tmp_path / "validation.jsonl").write_text('{"sentence": "charming ", "label": 1}\n')
    with pytest.raises(DatasetSchemaError, match=r"train.jsonl, line 2: not valid JSON"):
        ru.load_sst2(str(tmp_path))
    (tmp_path / "train.jsonl").write_text('{"sentence": "a gem ", "label": 1}\n["a list"]\n')
    with pytest.raises(DatasetSchemaError, match=r"line 2: a JSON list"):
        ru.load_sst2(str(tmp_path))


def test_data_the_notebooks_cannot_use_is_refused_with_a_reason(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"sentence": "a gem ", "label": "positive"}\n')
    (tmp_path / "validation.jsonl").write_text('{"sentence": "dull ", "label": "negative"}\n')
    with pytest.raises(DatasetSchemaError, match=r"labels \['positive'\]"):  # notebook 1 does not need labels,
        ru.load_sst2(str(tmp_path), require_label=False)  # but it shows their balance
    (tmp_path / "train.jsonl").write_text('{"sentence": "a gem ", "label": 1}\n')
    (tmp_path / "validation.jsonl").write_text('{"sentence": "  ", "label": 1}\n{"sentence": "", "label": 0}\n')
    with pytest.raises(DatasetSchemaError, match=r"Every sentence of the 'validation' split is empty"):
        ru.load_sst2(str(tmp_path))


# Every field of the three configs is checked, with the value given in the message.


def bad_values(f: dataclasses.Field, kind: type) -> list:
    """Values field `f` must refuse, from what it declares it accepts."""
    meta = f.metadata
    if kind is bool:
        return ["yes"]
    if kind in (int, float):
        low, high = (float(x) for x in meta["bounds"][1:-1].split(","))
        values = [math.nan, math.inf, "3"] + ([0.5] if kind is int else [])
        values += [low if meta["bounds"][0] == "(" else low - 1] if math.isfinite(low) else []
        values += [high if meta["bounds"][-1] == ")" else high + max(1.0, high)] if math.isfinite(high) else []
        return [
            kind(v) if isinstance(v, float) and kind is int and math.isfinite(v) and v.is_integer() else v
            for v in values
        ]
    if meta["choices"]:
        return ["not-a-choice"]
    if meta["nonempty"]:
        return [" "]
    return []


FREE_TEXT = {
    "figures_dir": "'' turns saving off; any other folder is checked by make_output_folders",
    "hub_repo_id": "checked by BaseConfig: empty, or the form owner/name",
}


@pytest.mark.parametrize("cls", ALL_CONFIGS, ids=lambda c: c.__name__)
def test_every_field_refuses_bad_values_and_echoes_them(cls):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = {"int": int, "float": float, "bool": bool}.get(hints[f.name].__name__, str)
        values = bad_values(f, kind)
        assert values or f.name in FREE_TEXT, f"{cls.__name__}.{f.name} accepts anything"
        for value in values:
            with pytest.raises(ConfigError) as error:
                ru.make_config(cls, {}, **{f.name: value})
            assert f.name in str(error.value), (f.name, value, str(error.value))
            if not (isinstance(value, str) and not value.strip()):
                assert repr(value) in str(error.value) or str(value) in str(error.value), (
                    f.name,
                    value,
                    str(error.value),
                )


@pytest.mark.parametrize(
    "env,pattern",
    [
        ({"RLHF_SAMPLE_MAX_NEW_TOKENS": "0"}, r"sample_max_new_tokens=0: must be in \[1, 1024\]"),
        ({"RLHF_INIT_KL_COEF": "inf"}, r"init_kl_coef=inf: must be a finite number"),
        ({"RLHF_CLIP_RANGE": "1.5"}, r"clip_range=1.5: must be in \(0, 1\)"),
        ({"RLHF_CLIP_RANGE_VALUE": "-1"}, r"clip_range_value=-1.0: must be in \(0, inf\)"),
        ({"RLHF_HUB_REPO_ID": "no slash"}, r"hub_repo_id='no slash'"),
        ({"RLHF_PREFIX_LENGTHS": "2|99"}, r"prefix_lengths='2\|99'"),
    ],
)
def test_the_probes_get_messages_with_the_value(env, pattern):
    cls = next(c for c in ALL_CONFIGS if any(f"RLHF_{f.name.upper()}" in env for f in dataclasses.fields(c)))
    with pytest.raises(ConfigError, match=pattern):
        ru.make_config(cls, env)


# ---------------------------------------------------------------------------
# Long training cells under nbval. nbval reads the kernel's output messages only once a cell has finished; a
# progress bar that redraws at every step floods that queue until the kernel's final "idle" message is dropped,
# and nbval fails the cell with "Timeout of 5 seconds exceeded waiting for output" (the cpu profile's training
# cells did, while `jupyter nbconvert`, which reads as it goes, passed).


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
