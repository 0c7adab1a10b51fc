"""Configuration: one dataclass per notebook, every field documented and range-checked, the profiles (full, cpu,
smoke: their values are in profile_values.py) and RLHF_ environment overrides.
The tuning runs behind the cpu profile's values: benchmarks/results/tuning_log.md."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .profile_values import PROFILE_NAMES, PROFILE_OVERRIDES

if typing.TYPE_CHECKING:  # for annotations only: these load when first used
    import pandas as pd


ENV_PREFIX = "RLHF_"

# How step (5) of notebook 3 computes the advantages (rlhf_utils, "Beyond PPO"): PPO's GAE with a value head, or a
# critic-free estimator. Each: (whether it compares the k responses to one prompt, a group; how its policy loss
# averages over tokens, rlhf_utils.aggregate_loss). The one list of their names: the others derive from it.
ESTIMATORS: dict[str, tuple[bool, str]] = {
    "gae": (False, "token"),
    "rloo": (True, "token"),
    "grpo": (True, "sequence"),
    "dr_grpo": (True, "constant"),
    "reinforce_pp": (False, "token"),
}
ADVANTAGE_ESTIMATORS = tuple(ESTIMATORS)
GROUP_ESTIMATORS = tuple(name for name, (group, _) in ESTIMATORS.items() if group)

HUB_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # what the hub accepts as a repo id: "owner/name"

INF = math.inf


class Open(float):
    """An end of a field's bounds that the value may not reach: bounds=(Open(0), 1) accepts 0 < value <= 1."""


def param(
    default: Any,
    explanation: str,
    bounds: tuple[float, float] | None = None,
    choices: Sequence[str] | None = None,
    nonempty: bool = False,
    training: bool = True,
) -> Any:
    """A dataclass field with a default, a one-line explanation (shown by `config_table`) and what values it accepts.

    bounds: (lowest, highest) for numbers, each reached unless written Open(x); choices: the allowed strings;
    nonempty: a string that must not be empty. `BaseConfig.__post_init__` checks every field against these.
    training=False: the field does not change what training computes (a folder, a count of iterations, how often to
    log), so a PPO run may resume from a checkpoint written under another value of it.
    """
    return field(
        default=default,
        metadata={
            "help": explanation,
            "bounds": bounds,
            "choices": choices,
            "nonempty": nonempty,
            "training": training,
        },
    )


def bookkeeping_fields(cls: type) -> set[str]:
    """The fields of config class `cls` declared with training=False."""
    return {f.name for f in dataclasses.fields(cls) if not f.metadata["training"]}


def _check(condition: bool, message: str) -> None:
    """Raise a ConfigError with `message` unless `condition` holds."""
    if not condition:
        raise ConfigError(message)


def in_bounds(value: float, bounds: tuple[float, float]) -> bool:
    """Whether `value` lies within (low, high); an Open end is excluded."""
    low, high = bounds
    return (value > low if isinstance(low, Open) else value >= low) and (
        value < high if isinstance(high, Open) else value <= high
    )


def interval(bounds: tuple[float, float]) -> str:
    """Bounds in the usual notation: (Open(0), 1) -> "(0, 1]", (1, INF) -> "[1, inf)"."""
    low, high = bounds
    number = lambda x: str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"
    left = "(" if isinstance(low, Open) or low == -INF else "["
    right = ")" if isinstance(high, Open) or high == INF else "]"
    return f"{left}{number(low)}, {number(high)}{right}"


def validate_field(f: dataclasses.Field, value: Any, kind: type) -> None:
    """Raise a ConfigError, with the value given and the accepted ones, unless `value` fits field `f`."""
    meta = f.metadata
    where = f"{f.name}={value!r}"
    how = f" Change it in the Configuration cell or with {ENV_PREFIX}{f.name.upper()}."
    if kind is bool:
        _check(isinstance(value, bool), f"{where}: must be True or False.{how}")
        return
    if kind in (int, float):
        _check(
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and (kind is float or float(value).is_integer()),
            f"{where}: must be {'an integer' if kind is int else 'a number'}.{how}",
        )
        _check(math.isfinite(value), f"{where}: must be a finite number.{how}")
        if meta["bounds"] is not None:
            _check(
                in_bounds(value, meta["bounds"]),
                f"{where}: must be in {interval(meta['bounds'])} ({meta['help']}).{how}",
            )
        return
    _check(isinstance(value, str), f"{where}: must be a string.{how}")
    if meta["nonempty"]:
        _check(value.strip() != "", f"{f.name} is empty: {meta['help']}.{how}")
    if meta["choices"] is not None:
        _check(value in meta["choices"], f"{where}: use one of {tuple(meta['choices'])}.{how}")


def _check_list(name: str, text: str, kind: Callable[[str], Any], what: str) -> list:
    """Parse a '|'-separated setting, naming it and its value when a part does not parse."""
    try:
        parts = split_list(text, kind)
    except ValueError:
        raise ConfigError(f"{name}={text!r}: must be {what}, separated by '|'.") from None
    _check(len(parts) > 0, f"{name}={text!r}: give at least one value ({what}, separated by '|').")
    return parts


@dataclass
class BaseConfig:
    """Settings every notebook shares."""

    profile: str = param(
        "full",
        "preset of sizes: 'full' (GPT-2 small, GPU), 'cpu' (small GPT-2 from scratch on real SST-2), 'smoke' (tiny, offline, for CI)",
        choices=PROFILE_NAMES,
        training=False,
    )
    model_name: str = param(
        "gpt2", "hub name or local folder of the model this notebook starts from", nonempty=True, training=False
    )
    dataset_name: str = param(
        "stanfordnlp/sst2",
        "hub name, or local folder with train/validation files (.jsonl, .csv or .parquet) holding `sentence` and `label`",
        nonempty=True,
    )
    output_dir: str = param(
        "outputs",
        "folder for everything this series writes (models, checkpoints, figures)",
        nonempty=True,
        training=False,
    )
    figures_dir: str = param(
        "", "folder where the notebooks also save their key figures as PNG ('' = do not save them)", training=False
    )
    seed: int = param(0, "seed for Python, NumPy and PyTorch (CPU and CUDA)", bounds=(0, 4294967295))
    device: str = param(
        "auto", "'auto' (CUDA if present, else CPU), 'cuda' or 'cpu'", choices=("auto", "cuda", "cpu"), training=False
    )
    precision: str = param(
        "auto",
        "'auto' (GPU: bf16 where it has it, else fp16 with loss scaling, as on the T4; CPU: fp32, or bf16 in the cpu "
        "profile on a CPU with native bf16), 'bf16', 'fp16' or 'fp32'",
        choices=("auto", "bf16", "fp16", "fp32"),
        training=False,
    )
    init_loss_scale: float = param(
        2.0**16,
        "fp16 only: the loss scale at the start (PyTorch's default 2^16); halved, and the step skipped, at each overflow",
        bounds=(1, 1e30),
    )
    max_length: int = param(
        64, "longest training sequence in tokens, EOS included; longer sentences are cut", bounds=(8, 1024)
    )
    push_to_hub: bool = param(
        False, "also upload the saved model to the Hugging Face hub (needs HF_TOKEN or Colab's secret)", training=False
    )
    hub_repo_id: str = param("", "hub repository for push_to_hub, e.g. 'your-name/gpt2-sst2-sft'", training=False)

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            validate_field(
                f, getattr(self, f.name), {"int": int, "float": float, "bool": bool}.get(hints[f.name].__name__, str)
            )
        _check(
            not self.hub_repo_id or HUB_REPO_ID.fullmatch(self.hub_repo_id) is not None,
            f"hub_repo_id={self.hub_repo_id!r}: use the form 'your-name/model-name'.",
        )
        _check(
            not self.push_to_hub or self.hub_repo_id != "", "push_to_hub=True needs hub_repo_id='your-name/model-name'."
        )


def redefault(cls: type, name: str, default: Any) -> Any:
    """Field `name` of config class `cls`, its explanation and accepted values, with another default."""
    return field(default=default, metadata=cls.__dataclass_fields__[name].metadata)


@dataclass
class TrainingConfig(BaseConfig):
    """Settings SFT and the reward model share: a supervised run over SST-2's sentences (defaults: notebook 1's)."""

    learning_rate: float = param(5e-5, "peak AdamW learning rate", bounds=(Open(0), Open(1)))
    lr_schedule: str = param(
        "cosine", "decay after warmup: 'cosine', 'linear' or 'constant'", choices=("cosine", "linear", "constant")
    )
    warmup_ratio: float = param(
        0.03, "share of the steps spent warming the learning rate up from 0", bounds=(0, Open(1))
    )
    num_epochs: float = param(1.0, "passes over the training sentences (fractions allowed)", bounds=(Open(0), 1000))
    weight_decay: float = param(
        0.01, "AdamW weight decay on matrices (not on biases and LayerNorm gains)", bounds=(0, Open(1))
    )
    max_grad_norm: float = param(1.0, "gradients are clipped to this global L2 norm", bounds=(Open(0), INF))
    max_train_samples: int = param(0, "use only this many training sentences (0 = all)", bounds=(0, INF))
    eval_sentences: int = param(
        0,
        "validation sentences scored during and after training (0 = all); fewer make short checks faster",
        bounds=(0, INF),
    )
    eval_every: int = param(400, "validate every this many steps", bounds=(1, INF))
    save_worse_model: bool = param(
        False,
        "save the model even when its validation metric (notebook 1: loss, notebook 2: AUC) ended worse than at the "
        "start, than its best, or than the model already saved",
    )


@dataclass
class SFTConfig(TrainingConfig):
    """Every hyperparameter of 1-SFT.ipynb: TrainingConfig's, and these."""

    batch_size: int = param(32, "sentences per optimisation step", bounds=(1, INF))
    num_eval_generations: int = param(
        128, "validation prompts sampled to measure how often samples end with EOS", bounds=(1, INF)
    )
    sample_max_new_tokens: int = param(40, "most tokens a sample may add to its prompt", bounds=(1, 1024))
    sample_temperature: float = param(
        1.0, "sampling temperature for the samples (1.0 = the model's own distribution)", bounds=(Open(0), 100)
    )
    sample_prompts: str = param(
        "the film|this movie is|i found the acting|the director|it 's a|the story",
        "fixed prompts sampled before and after training, separated by '|'",
        nonempty=True,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_list("sample_prompts", self.sample_prompts, str, "prompts")


@dataclass
class RMConfig(TrainingConfig):
    """Every hyperparameter of 2-RM Training.ipynb: TrainingConfig's (some with other defaults), and these."""

    learning_rate: float = redefault(TrainingConfig, "learning_rate", 3e-5)
    lr_schedule: str = redefault(TrainingConfig, "lr_schedule", "linear")
    warmup_ratio: float = redefault(TrainingConfig, "warmup_ratio", 0.05)
    num_epochs: float = redefault(TrainingConfig, "num_epochs", 2.0)
    eval_every: int = redefault(TrainingConfig, "eval_every", 500)

    loss: str = param(
        "bce",
        "'bce' (binary cross-entropy on the label) or 'pairwise' (Bradley-Terry on positive-vs-negative pairs)",
        choices=("bce", "pairwise"),
    )
    compare_losses: bool = param(True, "also train a model with the other loss on the same data and steps, and compare")
    compare_max_steps: int = param(400, "steps for each model of the loss comparison", bounds=(1, INF))
    batch_size: int = param(
        32, "sentences per step (pairs per step for the pairwise loss: batch_size / 2)", bounds=(2, INF)
    )
    prefix_lengths: str = param(
        "2|4|8|16", "prefix lengths in tokens for the truncated-sentence accuracy, separated by '|'", nonempty=True
    )
    norm_samples: int = param(
        4000,
        "training sentences scored to record the score's mean and standard deviation (saved for notebook 3)",
        bounds=(2, INF),
    )
    label_pairs: int = param(
        120, "section 10: pairs of the SFT model's responses you can label", bounds=(4, INF), training=False
    )
    simulated_pairs: int = param(
        1200,
        "section 10: more pairs, labelled by the simulated labeller, for the learning curve",
        bounds=(310, INF),
        training=False,
    )
    simulated_flip: float = param(
        0.2,
        "section 10: the share of the simulated labeller's choices flipped at random (a person's noise)",
        bounds=(0, 0.5),
        training=False,
    )
    label_response_length: int = param(
        24, "section 10: most tokens of each response you compare", bounds=(1, 1024), training=False
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        lengths = _check_list("prefix_lengths", self.prefix_lengths, int, "whole numbers of tokens")
        _check(
            all(1 <= k < self.max_length for k in lengths),
            f"prefix_lengths={self.prefix_lengths!r}: each must be in [1, max_length - 1] = [1, {self.max_length - 1}].",
        )


@dataclass
class PPOConfig(BaseConfig):
    """Every hyperparameter of 3-RLHF.ipynb."""

    sft_model_dir: str = param(
        "{output_dir}/sft_model",
        "the SFT model from 1-SFT.ipynb (a folder, or the hub repo it was pushed to): the policy's start and the frozen reference",
        nonempty=True,
        training=False,
    )
    reward_model_dir: str = param(
        "{output_dir}/reward_model",
        "the reward model from 2-RM Training.ipynb (a folder, or the hub repo it was pushed to)",
        nonempty=True,
        training=False,
    )
    policy_dir: str = param(
        "{output_dir}/ppo_policy", "where the final PPO policy is saved", nonempty=True, training=False
    )
    checkpoint_dir: str = param(
        "{output_dir}/ppo_checkpoint",
        "where training checkpoints are written (and resumed from); '' writes none",
        training=False,
    )
    require_cuda: bool = param(
        True,
        "stop with a message when no CUDA GPU is present (set False, or device='cpu', to run on CPU anyway)",
        training=False,
    )
    num_iterations: int = param(
        100, "PPO iterations: each samples a batch of episodes and optimises on it", bounds=(1, INF), training=False
    )
    batch_size: int = param(256, "episodes (prompt + response) sampled per iteration", bounds=(2, INF))
    minibatch_size: int = param(
        64, "episodes per gradient step; also the chunk size of the no-gradient passes over a batch", bounds=(1, INF)
    )
    ppo_epochs: int = param(4, "passes over each batch of episodes", bounds=(1, 100))
    prompt_min_words: int = param(2, "shortest prompt: the first this many words of a sentence", bounds=(1, 64))
    prompt_max_words: int = param(
        8, "longest prompt, in words (whole words: a prompt never ends inside a word)", bounds=(1, 64)
    )
    response_length: int = param(24, "most tokens the policy may add; a response ends earlier at EOS", bounds=(1, 1024))
    temperature: float = param(
        1.0, "sampling temperature, also used for the log-probs PPO optimises", bounds=(Open(0), 100)
    )
    learning_rate: float = param(1.4e-5, "AdamW learning rate of policy and value head", bounds=(Open(0), Open(1)))
    max_grad_norm: float = param(1.0, "gradients are clipped to this global L2 norm", bounds=(Open(0), INF))
    gamma: float = param(1.0, "discount factor of GAE (1.0: a sentence is short, nothing is discounted)", bounds=(0, 1))
    lam: float = param(0.95, "lambda of GAE: 0 = one-step TD, 1 = Monte Carlo", bounds=(0, 1))
    clip_range: float = param(
        0.2,
        "epsilon of the clipped policy loss: the ratio may move 1 +- epsilon (a large value, e.g. 10, turns the clip off)",
        bounds=(Open(0), 100),
    )
    clip_range_value: float = param(
        0.2, "the value may move this much from its old value before the loss is clipped", bounds=(Open(0), INF)
    )
    vf_coef: float = param(
        0.1, "weight of the value loss in the total loss (the value head shares the policy's trunk)", bounds=(0, INF)
    )
    init_kl_coef: float = param(0.05, "beta: weight of the per-token KL penalty at the start", bounds=(0, 100))
    adaptive_kl: bool = param(True, "adapt beta towards kl_target (Ziegler et al. 2019) or keep it fixed")
    kl_target: float = param(
        6.0, "KL to the reference, in nats per sequence, that the adaptive controller aims for", bounds=(Open(0), INF)
    )
    kl_horizon: int = param(
        2560,
        "episodes over which the adaptive controller can move beta by about 22% (e^0.2); 2560 = 10 iterations of 256",
        bounds=(1, INF),
    )
    advantage_estimator: str = param(
        "gae",
        "how step (5) computes the advantages: 'gae' (PPO, with the value head), or critic-free 'rloo', 'grpo', "
        "'dr_grpo', 'reinforce_pp' (no value loss)",
        choices=ADVANTAGE_ESTIMATORS,
    )
    samples_per_prompt: int = param(
        1,
        "responses sampled per prompt, k (a group); rloo, grpo and dr_grpo need k >= 2; batch_size must be a multiple of k",
        bounds=(1, INF),
    )
    section8_iterations: int = param(
        20,
        "iterations of section 8's short run of the loop with advantage_estimator='grpo' (0 = skip it)",
        bounds=(0, INF),
        training=False,
    )
    dpo_beta: float = param(
        0.1,
        "DPO's beta: how far the implicit reward beta log(pi / pi_ref) may pull from the reference",
        bounds=(Open(0), 100),
    )
    dpo_learning_rate: float = param(5e-6, "AdamW learning rate of section 8's DPO", bounds=(Open(0), Open(1)))
    dpo_pairs: int = param(
        2048,
        "preference pairs section 8's DPO trains on (two sampled responses each), over all its rounds; 0 = no DPO",
        bounds=(0, INF),
    )
    dpo_rounds: int = param(
        1,
        "rounds of DPO: 1 = offline (pairs sampled once, from the SFT model); more = online (fresh pairs from the "
        "current policy each round)",
        bounds=(1, INF),
    )
    dpo_epochs: int = param(2, "passes over each round's pairs", bounds=(1, 100))
    dpo_batch_size: int = param(32, "pairs per DPO step", bounds=(1, INF))
    whiten_advantages: bool = param(
        True, "normalise GAE's advantages to mean 0, std 1 over each batch (the other estimators scale their own)"
    )
    normalize_scores: bool = param(True, "use (score - mean) / std with the statistics saved beside the reward model")
    missing_eos_penalty: float = param(
        1.0, "subtracted from the (normalised) score of a response that did not end with EOS", bounds=(0, 100)
    )
    eval_prompts: int = param(
        256, "held-out validation prompts for the SFT-vs-PPO evaluation (0 = all)", bounds=(0, INF), training=False
    )
    eval_every: int = param(
        10,
        "evaluate the policy on the curve_prompts every this many iterations (the over-optimisation curve)",
        bounds=(1, INF),
        training=False,
    )
    curve_prompts: int = param(
        128,
        "held-out prompts of that periodic evaluation (the first of the evaluation prompts; 0 = no curve)",
        bounds=(0, INF),
        training=False,
    )
    samples_every: int = param(10, "show a sample table every this many iterations", bounds=(1, INF), training=False)
    checkpoint_every: int = param(
        0,
        "write a checkpoint every this many iterations (0: by time alone, checkpoint_minutes)",
        bounds=(0, INF),
        training=False,
    )
    checkpoint_minutes: float = param(
        10.0,
        "also write one when this many minutes have passed since the last (0: off): what a recycled Colab runtime can lose at most",
        bounds=(0, INF),
        training=False,
    )
    resume: bool = param(True, "continue from checkpoint_dir when it holds a checkpoint", training=False)

    @property
    def uses_critic(self) -> bool:
        """Whether step (5) uses the value head (PPO's GAE) and step (6) trains it; section 8's estimators do not."""
        return self.advantage_estimator == "gae"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(
            self.minibatch_size <= self.batch_size and self.batch_size % self.minibatch_size == 0,
            f"batch_size={self.batch_size} must be a multiple of minibatch_size={self.minibatch_size}.",
        )
        _check(
            self.batch_size % self.samples_per_prompt == 0,
            f"batch_size={self.batch_size} must be a multiple of samples_per_prompt={self.samples_per_prompt}.",
        )
        _check(
            self.advantage_estimator not in GROUP_ESTIMATORS or self.samples_per_prompt >= 2,
            f"advantage_estimator={self.advantage_estimator!r} compares the responses to one prompt: set "
            f"samples_per_prompt to 2 or more (e.g. 4).",
        )
        _check(
            self.dpo_pairs == 0 or self.dpo_pairs >= self.dpo_rounds,
            f"dpo_pairs={self.dpo_pairs} must be at least dpo_rounds={self.dpo_rounds} (a pair or more per round).",
        )
        _check(
            self.prompt_min_words <= self.prompt_max_words,
            f"prompt_min_words={self.prompt_min_words} is above prompt_max_words={self.prompt_max_words}.",
        )


ALL_CONFIGS: tuple[type, ...] = (SFTConfig, RMConfig, PPOConfig)

COLAB_SETTINGS = {"REPO_URL", "DRIVE_MOUNT", "DRIVE_FOLDER", "SKIP_INSTALL"}  # RLHF_ variables of the setup cell
RESERVED_ENV = {"PROFILE"} | COLAB_SETTINGS

ENV_ALIASES = {"model": "model_name", "dataset": "dataset_name"}  # RLHF_MODEL, RLHF_DATASET


def _parse_env_value(name: str, raw: str, annotation: Any) -> Any:
    """Parse the text of an `RLHF_` variable into the type of the config field it overrides."""
    kind = {"int": int, "float": float, "bool": bool, "str": str}.get(
        annotation if isinstance(annotation, str) else getattr(annotation, "__name__", ""), str
    )
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind is int:
            return int(raw.replace("_", ""))
        if kind is float:
            return float(raw)
        return raw
    except ValueError:
        raise ConfigError(
            f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind.__name__}; "
            f"give a {kind.__name__} or unset the variable."
        ) from None


def selected_profile(environ: Mapping[str, str] = os.environ) -> str:
    """The profile the environment asks for: RLHF_PROFILE, else 'full'."""
    profile = environ.get(ENV_PREFIX + "PROFILE", "").strip().lower() or "full"
    if profile not in PROFILE_NAMES:
        raise ConfigError(f"RLHF_PROFILE={profile!r}: choose one of {PROFILE_NAMES}.")
    return profile


def make_config(cls: type, environ: Mapping[str, str] = os.environ, **edits: Any) -> Any:
    """Build a config: the class defaults, then the profile's values, then `edits`, then `RLHF_` variables."""
    profile = selected_profile(environ)
    values: dict[str, Any] = {"profile": profile}
    values.update(PROFILE_OVERRIDES.get(profile, {}).get("*", {}))
    values.update(PROFILE_OVERRIDES.get(profile, {}).get(cls.__name__, {}))
    values.update(edits)
    own_fields = {f.name: f for f in dataclasses.fields(cls)}
    series_fields = {f.name for c in ALL_CONFIGS for f in dataclasses.fields(c)}
    hints = typing.get_type_hints(cls)
    for key, raw in sorted(environ.items()):
        if not key.startswith(ENV_PREFIX) or key[len(ENV_PREFIX) :] in RESERVED_ENV:
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name in ENV_ALIASES:
            if ENV_PREFIX + ENV_ALIASES[name].upper() in environ:
                raise ConfigError(
                    f"{key} and {ENV_PREFIX}{ENV_ALIASES[name].upper()} are the same setting: set only one."
                )
            name = ENV_ALIASES[name]
        if name not in series_fields:
            close = difflib.get_close_matches(name, sorted(series_fields), n=3)
            hint = f" Did you mean {', '.join(ENV_PREFIX + c.upper() for c in close)}?" if close else ""
            if name in PROFILE_NAMES:  # e.g. RLHF_SMOKE=1
                hint = f" A profile is picked by {ENV_PREFIX}PROFILE={name}."
            raise ConfigError(
                f"{key} is not a setting of this series.{hint} Unset it, or see the "
                f"Configuration cell for the names (RLHF_ + field name in capitals)."
            )
        if name in own_fields:  # a field of another notebook's config is left to that notebook
            values[name] = _parse_env_value(name, raw, hints[name])
    output_dir = values.get("output_dir", own_fields["output_dir"].default)
    for name, value in list(values.items()):
        if isinstance(value, str) and "{output_dir}" in value:
            values[name] = value.replace("{output_dir}", output_dir)
    for name, f in own_fields.items():  # defaults that point into output_dir
        if name not in values and isinstance(f.default, str) and "{output_dir}" in f.default:
            values[name] = f.default.replace("{output_dir}", output_dir)
    unknown = set(values) - set(own_fields)
    if unknown:
        raise ConfigError(f"{cls.__name__} has no field(s) {sorted(unknown)}.")
    return cls(**values)


def config_table(cfg: Any) -> pd.DataFrame:
    """The config as a table: field, value, and what it means."""
    import pandas as pd

    rows = [(f.name, getattr(cfg, f.name), f.metadata.get("help", "")) for f in dataclasses.fields(cfg)]
    return pd.DataFrame(rows, columns=["field", "value", "meaning"]).set_index("field")


def split_list(text: str, kind: Callable[[str], Any] = str) -> list:
    """Split a '|'-separated config value into a list of `kind`."""
    return [kind(part.strip()) for part in text.split("|") if part.strip()]
