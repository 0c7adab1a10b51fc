"""Configuration: profiles, RLHF_ overrides, a validation rule for every field with the value in the message,
precision, and an import that does nothing."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest
import torch

import rlhf_utils as ru
from rlhf_support import device
from rlhf_support.config import ALL_CONFIGS, PROFILE_NAMES, PROFILE_OVERRIDES, Open, interval, selected_profile
from rlhf_support.device import cpu_supports_bf16
from rlhf_support.errors import ConfigError
from rlhf_support.profiles import BASE_MODEL_SIZES

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------
# The cpu profile's settings and precision


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
    assert (sizes["n_layer"], sizes["n_embd"], sizes["n_positions"], sizes["vocab_size"]) == (4, 128, 64, 24576)


def test_cpu_precision_is_bf16_only_where_the_cpu_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr(device, "cpu_supports_bf16", lambda native=native: native)
        assert ru.resolve_precision(cpu, "auto", "cpu").name == ("bf16" if native else "fp32")
        assert ru.resolve_precision(cpu, "auto", "full").name == "fp32"
        assert ru.resolve_precision(cpu, "auto", "smoke").name == "fp32"


def test_figures_dir_does_not_block_resuming() -> None:
    a = ru.make_config(ru.PPOConfig, {"RLHF_PROFILE": "cpu"})
    b = ru.make_config(ru.PPOConfig, {"RLHF_PROFILE": "cpu", "RLHF_FIGURES_DIR": "elsewhere"})
    assert ru.ppo_run_signature(a, "sft", "rm") == ru.ppo_run_signature(b, "sft", "rm")


# ---------------------------------------------------------------------------
# Profiles, RLHF_ variables, ranges, precision, and an import that does nothing


@pytest.mark.parametrize(
    "environ,expected",
    [
        ({}, "full"),
        ({"RLHF_PROFILE": ""}, "full"),
        ({"RLHF_PROFILE": "cpu"}, "cpu"),
        ({"RLHF_PROFILE": " Smoke "}, "smoke"),
        ({"RLHF_PROFILE": "full"}, "full"),
        ({"RLHF_PROFILE": "smoke", "RLHF_OUTPUT_DIR": "elsewhere"}, "smoke"),
        ({"RLHF_PROFILE": "CPU"}, "cpu"),
        ({"RLHF_PROFILE": "smoke"}, "smoke"),
        ({"RLHF_PROFILE": " full\n"}, "full"),
    ],
)
def test_selected_profile(environ, expected):
    assert selected_profile(environ) == expected


def test_an_unknown_profile_or_another_way_to_pick_one_is_refused():
    with pytest.raises(ConfigError, match="tiny"):
        selected_profile({"RLHF_PROFILE": "tiny"})
    with pytest.raises(ConfigError, match="RLHF_SMOKE is not a setting.*RLHF_PROFILE=smoke"):  # one way: RLHF_PROFILE
        ru.make_config(ru.SFTConfig, environ={"RLHF_SMOKE": "1"})


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
    smoke = ru.make_config(ru.PPOConfig, environ={"RLHF_PROFILE": "smoke", "RLHF_OUTPUT_DIR": "runs/a"})
    assert smoke.model_name == "runs/a/base_model" and smoke.dataset_name == "runs/a/data/sst2"
    assert smoke.sft_model_dir == "runs/a/sft_model"
    assert ru.make_config(ru.PPOConfig, environ={}, output_dir="o2").policy_dir == "o2/ppo_policy"
    default = ru.make_config(ru.PPOConfig, environ={"RLHF_PROFILE": "smoke"})
    assert default.checkpoint_dir == "outputs/smoke/ppo_checkpoint"
    # a templated value given explicitly follows the output folder too
    own = ru.make_config(ru.PPOConfig, environ={"RLHF_OUTPUT_DIR": "x", "RLHF_POLICY_DIR": "{output_dir}/mine"})
    assert own.policy_dir == "x/mine"


def test_split_list():
    assert ru.split_list("2| 4 |8|", int) == [2, 4, 8]
    assert ru.split_list("the film|it 's a") == ["the film", "it 's a"]


def test_resolve_precision_on_cpu():
    cpu = torch.device("cpu")
    full = ru.resolve_precision(cpu, "auto", profile="full")
    assert full.name == "fp32" and full.dtype is None and not full.use_grad_scaler
    assert not full.grad_scaler().is_enabled()
    assert ru.resolve_precision(cpu, "fp16").use_grad_scaler  # the T4's path, reachable on a CPU (tests/test_fp16.py)
    assert ru.resolve_precision(cpu, "bf16").dtype == torch.bfloat16
    assert ru.resolve_precision(cpu, "auto", profile="cpu").name == ("bf16" if cpu_supports_bf16() else "fp32")
    assert ru.resolve_device("cpu") == cpu


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


# ---------------------------------------------------------------------------
# Every field refuses bad values and echoes them


def test_bounds_are_values_shown_as_intervals():
    assert interval((Open(0), 1)) == "(0, 1]" and interval((1, math.inf)) == "[1, inf)"
    assert interval((0, Open(1))) == "[0, 1)" and interval((0, 4294967295)) == "[0, 4294967295]"
    learning_rate = {f.name: f for f in dataclasses.fields(ru.SFTConfig)}["learning_rate"].metadata["bounds"]
    assert learning_rate == (0, 1) and all(isinstance(end, Open) for end in learning_rate)  # 0 < lr < 1
    with pytest.raises(ConfigError, match=r"learning_rate=1: must be in \(0, 1\)"):
        ru.make_config(ru.SFTConfig, {}, learning_rate=1)


def bad_values(f: dataclasses.Field, kind: type) -> list:
    """Values field `f` must refuse, from what it declares it accepts."""
    meta = f.metadata
    if kind is bool:
        return ["yes"]
    if kind in (int, float):
        low, high = meta["bounds"]
        values = [math.nan, math.inf, "3"] + ([0.5] if kind is int else [])
        values += [float(low) if isinstance(low, Open) else low - 1] if math.isfinite(low) else []
        values += [float(high) if isinstance(high, Open) else high + max(1.0, high)] if math.isfinite(high) else []
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
    "checkpoint_dir": "'' writes no checkpoint (section 8's short run); any other folder is checked by make_output_folders",
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
        ({"RLHF_CLIP_RANGE": "150"}, r"clip_range=150.0: must be in \(0, 100\]"),
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
# fp16 on a CPU is the T4's path


def test_fp16_on_a_cpu_is_the_t4_path():
    precision = ru.resolve_precision(torch.device("cpu"), "fp16")
    assert precision.name == "fp16" and precision.use_grad_scaler and precision.grad_scaler().is_enabled()
    with precision.autocast():
        out = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert out.dtype == torch.float16
    assert ru.resolve_precision(torch.device("cpu"), "auto", "full").name == "fp32"  # never chosen by 'auto'


def test_the_support_package_never_imports_the_teaching_core_and_has_no_cycles():
    """rlhf_utils (what the notebooks teach) may use rlhf_support (the plumbing); never the reverse."""
    import ast

    graph = {}
    for path in sorted((ROOT / "rlhf_support").glob("*.py")):
        tree = ast.parse(path.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1 and n.module}
        absolute = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        absolute |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module}
        assert not {m for m in absolute if m.split(".")[0] == "rlhf_utils"}, path.name
        graph[path.stem] = imported | {m.split(".", 1)[1] for m in absolute if m.startswith("rlhf_support.")}

    def reaches(start: str, seen: tuple[str, ...] = ()) -> None:
        for module in graph.get(start, ()):
            assert module not in seen + (start,), f"import cycle: {' -> '.join(seen + (start, module))}"
            reaches(module, seen + (start,))

    for module in graph:
        reaches(module)
