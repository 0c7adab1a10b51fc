"""rlhf_utils.py: the shared, tested helpers of the "RLHF in Notebooks" series.

The three notebooks teach; this module holds the one implementation of each piece they teach,
so that the tests in `tests/` check exactly the code the notebooks run. It reads top to bottom
in the order a learner meets the pieces:

    hub access -> Colab setup -> config -> device and precision -> data -> models -> generation
    -> PPO math and evaluation -> training helpers -> plots -> checkpoints -> profiles (smoke / cpu assets)

The smoke profile's sentence grammar lives in smoke_data.py, out of the way.

Shapes: B = batch, T = tokens, P = prompt tokens, R = response tokens, V = vocabulary, H = hidden.
`mask` tensors are 1 on the tokens that count (response tokens in PPO) and 0 elsewhere.

References (equation numbers are the papers'):
- [Radford19]  Radford et al., "Language Models are Unsupervised Multitask Learners" (GPT-2), 2019.
- [Ziegler19]  Ziegler et al., "Fine-Tuning Language Models from Human Preferences", 2019,
               arXiv:1909.08593. Eq. (2): the KL-shaped reward; Sec. 2.2: the adaptive KL coefficient.
- [Schulman16] Schulman et al., "High-Dimensional Continuous Control Using Generalized Advantage
               Estimation", 2016, arXiv:1506.02438. Eq. (16): GAE(gamma, lambda).
- [Schulman17] Schulman et al., "Proximal Policy Optimization Algorithms", 2017, arXiv:1707.06347.
               Eq. (7): the clipped surrogate objective; Eq. (9): the combined loss with a plain squared-error
               value loss. The clipped value loss is from OpenAI's implementation (baselines, ppo2).
- [Ouyang22]   Ouyang et al., "Training language models to follow instructions with human
               feedback" (InstructGPT), 2022, arXiv:2203.02155. Eq. (1): the pairwise reward loss.
- [Huang24]    Huang et al., "The N+ Implementation Details of RLHF with PPO: A Case Study on
               TL;DR Summarization", 2024, arXiv:2403.17031.
- [Gao23]      Gao, Schulman and Hilton, "Scaling Laws for Reward Model Overoptimization", 2023,
               arXiv:2210.10760: the proxy reward keeps rising while the gold one falls (the curve of notebook 3).
- [Hutto14]    Hutto and Gilbert, "VADER: A Parsimonious Rule-based Model for Sentiment Analysis of Social
               Media Text", ICWSM 2014: the independent judge (SentimentJudge).
"""
from __future__ import annotations

import os
import socket
import sys
import urllib.parse


# -----------------------------------------------------------------------------
# Hub access. This runs before transformers/datasets are imported, because the
# Hugging Face libraries read HF_HUB_OFFLINE once, at import time.

def hub_reachable(timeout: float = 2.0) -> bool:
    """True when a TCP connection to the Hugging Face hub opens within `timeout` seconds."""
    host = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        with socket.create_connection((host or "huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def configure_hub_access(timeout: float = 2.0) -> bool:
    """Switch the HF libraries to offline mode when the hub is unreachable; returns whether it is online.

    Without this, a download attempt on a machine without internet retries for 20-80 s before it
    fails. Offline, cached files still load and missing ones fail at once (see `HubUnavailableError`).
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    if hub_reachable(timeout):
        return True
    os.environ["HF_HUB_OFFLINE"] = "1"
    for module_name in ("huggingface_hub.constants", "datasets.config"):  # already imported: patch too
        if module_name in sys.modules:
            setattr(sys.modules[module_name], "HF_HUB_OFFLINE", True)
    return False


HUB_ONLINE = configure_hub_access()

import contextlib  # noqa: E402  (imports below must follow configure_hub_access)
import dataclasses  # noqa: E402
import difflib  # noqa: E402
import hashlib  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
import typing  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Iterator, Mapping, Sequence  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402


class RLHFError(Exception):
    """An error with a message that says what to do; raised for bad input, never for bugs."""


class ConfigError(RLHFError, ValueError):
    """A configuration value or `RLHF_` override that cannot be used."""


class DatasetSchemaError(RLHFError, ValueError):
    """A dataset without the expected splits, columns or labels."""


class HubUnavailableError(RLHFError, OSError):
    """A model or dataset that must come from the Hugging Face hub, which cannot be reached."""


class CheckpointError(RLHFError, OSError):
    """A missing, half-written, corrupt or incompatible checkpoint."""


class TrainingDivergedError(RLHFError, FloatingPointError):
    """A NaN or infinite loss: training stopped before it could damage the last good checkpoint."""


# -----------------------------------------------------------------------------
# Colab: what the setup cell does there. Each notebook opened from its badge gets a runtime of its own, and a
# recycled runtime loses its disk, so the three notebooks share one output folder on Google Drive.

COLAB_KEEP = {"torch", "torchvision", "torchaudio", "ipykernel", "ipython", "jupyter", "jupyter-client",
              "jupyter-core", "notebook", "jupyter-server"}  # Colab's own builds: never replaced
COLAB_SETTINGS = {"REPO_URL", "DRIVE_MOUNT", "DRIVE_FOLDER", "SKIP_INSTALL"}  # RLHF_ variables of the setup cell
PIP_LOG = "pip-install.log"  # the whole output of the setup cell's pip run, in the clone


def in_colab() -> bool:
    """True inside Google Colab (its kernel imports google.colab at start)."""
    return "google.colab" in sys.modules


def _installed_version(name: str) -> str | None:
    """The installed version of distribution `name`, or None."""
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def colab_install_plan(requirements: str | Path = "requirements.txt",
                       installed: Callable[[str], str | None] | None = None) -> list[str]:
    """The requirements this environment lacks or has too old, never Colab's torch, ipykernel or jupyter.

    `installed(name)` gives a distribution's version or None (default: importlib.metadata).
    """
    from packaging.requirements import Requirement

    installed = installed or _installed_version
    plan = []
    for line in Path(requirements).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        name = requirement.name.lower().replace("_", "-")
        have = installed(requirement.name)
        if have is not None and requirement.specifier.contains(have, prereleases=True):
            continue
        if name in COLAB_KEEP:
            if have is not None:
                print(f"Keeping Colab's {requirement.name} {have}, though the series was tested with {requirement}: "
                      "replacing Colab's own build could break the runtime.")
            continue
        plan.append(str(requirement))
    return plan


def imported_distributions() -> dict[str, str]:
    """{distribution: version} of every installed package a module of this process was imported from."""
    from importlib import metadata
    owners = metadata.packages_distributions()
    found = {}
    for module in {name.split(".")[0] for name in list(sys.modules)}:
        for distribution in owners.get(module, []):
            version = _installed_version(distribution)
            if version is not None:
                found[distribution] = version
    return found


def colab_constraints() -> dict[str, str]:
    """The versions pip must keep: Colab's own builds (torch and its companions: torch*, triton, nvidia-*; the kernel),
    numpy, and every package already imported (upgrading one under a running kernel leaves the old code loaded)."""
    from importlib import metadata
    companions = {d.metadata["Name"] for d in metadata.distributions() if d.metadata["Name"]
                  and d.metadata["Name"].lower().startswith(("torch", "triton", "nvidia-"))}
    keep = {name: _installed_version(name) for name in COLAB_KEEP | companions | {"numpy"}}
    return {**{k: v for k, v in keep.items() if v is not None}, **imported_distributions()}


def colab_install(requirements: str | Path = "requirements.txt", log: str | Path = PIP_LOG) -> list[str]:
    """pip-install `colab_install_plan` with every preloaded package held at its version; says what it did.

    pip's whole output goes to `log`; a failure shows its last lines. If a package that was already imported changed
    version anyway, the notebook stops with the one fix (restart the session). RLHF_SKIP_INSTALL=1 only prints the plan.
    """
    import subprocess
    import tempfile
    plan = colab_install_plan(requirements)
    if os.environ.get(ENV_PREFIX + "SKIP_INSTALL", "") in ("1", "true", "yes"):
        print(f"RLHF_SKIP_INSTALL is set: not installing {plan or 'anything'}.")
        return plan
    if not plan:
        print("Colab already has everything the series needs: nothing installed.")
        return plan
    held = colab_constraints()
    with tempfile.NamedTemporaryFile("w", suffix="-constraints.txt", delete=False) as constraints:
        constraints.write("".join(f"{name}=={version}\n" for name, version in sorted(held.items())))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check",
                           "-c", constraints.name, *plan], capture_output=True, text=True)
    Path(constraints.name).unlink(missing_ok=True)
    output = done.stdout + done.stderr
    Path(log).write_text(output)
    lines = [line for line in output.splitlines() if line.strip()]
    if done.returncode != 0:
        tail = "\n".join(lines[-15:])
        raise RLHFError(f"pip could not install {', '.join(plan)} (exit status {done.returncode}). The last lines of "
                        f"its output (all of it is in {Path(log).resolve()}):\n{tail}\n"
                        f"The install holds the {len(held)} packages Colab preloaded at their versions; a conflict "
                        "with one of them means this Colab is newer or older than the series supports: say so in an "
                        "issue of the series, with that file.")
    for line in lines:  # what -q would hide: the resolver's warnings and the one-line summary
        if line.startswith(("WARNING: pip", "ERROR", "Successfully installed")) or "conflict" in line.lower():
            print(line)
    print(f"installed {', '.join(plan)} in {time.perf_counter() - started:.0f} s (pip's output: {log})")
    changed = [f"{name} {before} -> {_installed_version(name)}" for name, before in held.items()
               if _installed_version(name) != before and name in imported_distributions()]
    if changed:
        raise RLHFError(f"Already imported, and changed by the install: {', '.join(changed)}. This kernel still runs "
                        "the old code. Restart it (Runtime > Restart session), then run all cells again: the "
                        "install is done and will not run again.")
    return plan


DRIVE_DISCONNECTED = {107, 5}  # ENOTCONN, EIO: what a Drive mount that went away raises


def drive_error_hint(error: OSError) -> str:
    """A sentence for an OSError that a disconnected Google Drive mount raises, else ''."""
    if getattr(error, "errno", None) in DRIVE_DISCONNECTED:
        return (f" This looks like Google Drive disconnecting (errno {error.errno}): run the setup cell again to "
                "remount it (what was saved before is on Drive), then this cell.")
    return ""


def _drive_mount_point() -> Path:
    """Where Google Drive is mounted: RLHF_DRIVE_MOUNT, by default Colab's /content/drive."""
    return Path(os.environ.get(ENV_PREFIX + "DRIVE_MOUNT") or "/content/drive")


def _drive_folder() -> Path:
    """The folder on Drive that holds the series' outputs: RLHF_DRIVE_MOUNT / RLHF_DRIVE_FOLDER."""
    return _drive_mount_point() / os.environ.get(ENV_PREFIX + "DRIVE_FOLDER", "MyDrive/rlhf-in-notebooks")


def keep_outputs_on_drive(enabled: bool = True, outputs: str | Path = "outputs") -> Path | None:
    """Mount Google Drive and make the output folder `outputs` (in the clone) a link to a folder there.

    Every profile writes under outputs/ (outputs/, outputs/cpu/, outputs/smoke/), so through the link all of
    them land on Drive, whichever profile is chosen later, and the three notebooks share one folder. The mount
    point and the folder on Drive are RLHF_DRIVE_MOUNT (/content/drive) and RLHF_DRIVE_FOLDER
    (MyDrive/rlhf-in-notebooks). When Drive cannot be used (declined, the mount failed, a local outputs/ in the
    way), the notebook stops with how to retry and how to go on without Drive. Returns the folder on Drive,
    or None with enabled=False.
    """
    lost = ("Without Drive, outputs stay on this runtime's disk: Colab deletes them when it recycles the runtime, "
            "and the next notebook, opened from its badge, runs in a runtime of its own and will not see them. "
            "Then either run the next notebook in this runtime (a cell with: !jupyter nbconvert --to notebook "
            "--execute \"2-RM Training.ipynb\"), or push the models to the hub (push_to_hub=True) and point "
            "notebook 3 at them (RLHF_SFT_MODEL_DIR / RLHF_REWARD_MODEL_DIR = your-name/...).")
    if not enabled:
        print("KEEP_OUTPUTS_ON_DRIVE is False. " + lost)
        return None
    mount_point = _drive_mount_point()
    folder = _drive_folder()
    on_drive, outputs = folder / "outputs", Path(outputs)
    try:
        from google.colab import drive
        drive.mount(str(mount_point))
        on_drive.mkdir(parents=True, exist_ok=True)
    except Exception as error:  # declined in the browser, no Drive, a timeout: Colab raises several kinds
        raise RLHFError(f"Google Drive could not be mounted ({type(error).__name__}: {error}). To retry, run this "
                        "cell again and accept Google's dialog within 2 minutes (it may open in another browser "
                        "tab). To go on without Drive, set KEEP_OUTPUTS_ON_DRIVE = False in this cell and run it "
                        "again. " + lost) from None
    if outputs.is_symlink() and outputs.resolve() == on_drive.resolve():
        pass  # a kernel restart: the link is already there
    elif outputs.exists() or outputs.is_symlink():
        raise RLHFError(f"{outputs.resolve()} already exists in this runtime, so the outputs cannot go to Drive "
                        f"(a cell ran before this one). Move what it holds to {on_drive} (or delete it), then run "
                        "this cell again; or set KEEP_OUTPUTS_ON_DRIVE = False to keep it. " + lost)
    else:
        outputs.symlink_to(on_drive.resolve(), target_is_directory=True)
    print(f"Outputs go to Google Drive: {outputs}/ is a link to {on_drive}. The three notebooks share it, "
          "and a recycled runtime loses nothing: run the notebook again and it continues from what is there.")
    if os.environ.get(ENV_PREFIX + "OUTPUT_DIR"):
        print(f"(RLHF_OUTPUT_DIR={os.environ[ENV_PREFIX + 'OUTPUT_DIR']} is set, so this notebook writes there instead.)")
    return folder


def finish_drive_uploads() -> bool:
    """In Colab with Drive mounted: wait until Drive has every file this runtime wrote, then unmount it.

    Colab uploads Drive writes in the background; only flush_and_unmount waits for them. Returns whether it did.
    """
    if not in_colab() or not (_drive_mount_point() / "MyDrive").exists():
        print("Not in Colab with Google Drive mounted: nothing to upload.")
        return False
    from google.colab import drive
    started = time.perf_counter()
    drive.flush_and_unmount()
    print(f"Google Drive has everything this notebook saved ({time.perf_counter() - started:.0f} s to finish the "
          "uploads): you can close this runtime. The next notebook, in its own runtime, will find it.")
    return True


# -----------------------------------------------------------------------------
# Config

ENV_PREFIX = "RLHF_"
PROFILE_NAMES = ("full", "cpu", "smoke")
HUB_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # what the hub accepts as a repo id: "owner/name"


def param(default: Any, help: str, bounds: str | None = None, choices: Sequence[str] | None = None,
          nonempty: bool = False) -> Any:
    """A dataclass field with a default, a one-line explanation (shown by `config_table`) and what values it accepts.

    bounds: an interval such as "(0, 1)" or "[1, inf)" for numbers; choices: the allowed strings;
    nonempty: a string that must not be empty. `BaseConfig.__post_init__` checks every field against these.
    """
    return field(default=default, metadata={"help": help, "bounds": bounds, "choices": choices, "nonempty": nonempty})


def _check(condition: bool, message: str) -> None:
    """Raise a ConfigError with `message` unless `condition` holds."""
    if not condition:
        raise ConfigError(message)


def _in_bounds(value: float, bounds: str) -> bool:
    """Whether `value` lies in an interval written like "(0, 1]" or "[1, inf)"."""
    low, high = (float(part) for part in bounds[1:-1].split(","))
    above = value > low if bounds[0] == "(" else value >= low
    below = value < high if bounds[-1] == ")" else value <= high
    return above and below


def check_field(f: dataclasses.Field, value: Any, kind: type) -> None:
    """Raise a ConfigError, with the value given and the accepted ones, unless `value` fits field `f`."""
    meta = f.metadata
    where = f"{f.name}={value!r}"
    how = f" Change it in the Configuration cell or with {ENV_PREFIX}{f.name.upper()}."
    if kind is bool:
        _check(isinstance(value, bool), f"{where}: must be True or False.{how}")
        return
    if kind in (int, float):
        _check(isinstance(value, (int, float)) and not isinstance(value, bool) and (kind is float or float(value).is_integer()),
               f"{where}: must be {'an integer' if kind is int else 'a number'}.{how}")
        _check(math.isfinite(value), f"{where}: must be a finite number.{how}")
        if meta["bounds"] is not None:
            _check(_in_bounds(value, meta["bounds"]), f"{where}: must be in {meta['bounds']} ({meta['help']}).{how}")
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

    profile: str = param("full", "preset of sizes: 'full' (GPT-2 small, GPU), 'cpu' (small GPT-2 from scratch on real SST-2), 'smoke' (tiny, offline, for CI)", choices=PROFILE_NAMES)
    model_name: str = param("gpt2", "hub name or local folder of the model this notebook starts from", nonempty=True)
    dataset_name: str = param("stanfordnlp/sst2", "hub name, or local folder with train/validation files (.jsonl, .csv or .parquet) holding `sentence` and `label`", nonempty=True)
    output_dir: str = param("outputs", "folder for everything this series writes (models, checkpoints, figures)", nonempty=True)
    figures_dir: str = param("", "folder where the notebooks also save their key figures as PNG ('' = do not save them)")
    seed: int = param(0, "seed for Python, NumPy and PyTorch (CPU and CUDA)", bounds="[0, 4294967295]")
    device: str = param("auto", "'auto' (CUDA if present, else CPU), 'cuda' or 'cpu'", choices=("auto", "cuda", "cpu"))
    precision: str = param("auto", "'auto' (bf16 on GPUs that have it, fp16 with loss scaling on others such as the T4, fp32 on CPU), 'bf16', 'fp16' or 'fp32'", choices=("auto", "bf16", "fp16", "fp32"))
    init_loss_scale: float = param(2.0 ** 16, "fp16 only: the loss scale at the start (PyTorch's default 2^16); halved, and the step skipped, at each overflow", bounds="[1, 1e30]")
    max_length: int = param(64, "longest training sequence in tokens, EOS included; longer sentences are cut", bounds="[8, 1024]")
    push_to_hub: bool = param(False, "also upload the saved model to the Hugging Face hub (needs HF_TOKEN or Colab's secret)")
    hub_repo_id: str = param("", "hub repository for push_to_hub, e.g. 'your-name/gpt2-sst2-sft'")

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            check_field(f, getattr(self, f.name), {"int": int, "float": float, "bool": bool}.get(hints[f.name].__name__, str))
        _check(not self.hub_repo_id or HUB_REPO_ID.fullmatch(self.hub_repo_id) is not None,
               f"hub_repo_id={self.hub_repo_id!r}: use the form 'your-name/model-name'.")
        _check(not self.push_to_hub or self.hub_repo_id != "", "push_to_hub=True needs hub_repo_id='your-name/model-name'.")


@dataclass
class SFTConfig(BaseConfig):
    """Every hyperparameter of 1-SFT.ipynb."""

    batch_size: int = param(32, "sentences per optimisation step", bounds="[1, inf)")
    learning_rate: float = param(5e-5, "peak AdamW learning rate", bounds="(0, 1)")
    lr_schedule: str = param("cosine", "decay after warmup: 'cosine', 'linear' or 'constant'", choices=("cosine", "linear", "constant"))
    warmup_ratio: float = param(0.03, "share of the steps spent warming the learning rate up from 0", bounds="[0, 1)")
    num_epochs: float = param(1.0, "passes over the training sentences (fractions allowed)", bounds="(0, 1000]")
    weight_decay: float = param(0.01, "AdamW weight decay on matrices (not on biases and LayerNorm gains)", bounds="[0, 1)")
    max_grad_norm: float = param(1.0, "gradients are clipped to this global L2 norm", bounds="(0, inf)")
    max_train_samples: int = param(0, "use only this many training sentences (0 = all)", bounds="[0, inf)")
    eval_sentences: int = param(0, "validation sentences for the validation loss (0 = all); fewer make short checks faster", bounds="[0, inf)")
    eval_every: int = param(400, "validate every this many steps", bounds="[1, inf)")
    num_eval_generations: int = param(128, "validation prompts sampled to measure how often samples end with EOS", bounds="[1, inf)")
    sample_max_new_tokens: int = param(40, "most tokens a sample may add to its prompt", bounds="[1, 1024]")
    sample_temperature: float = param(1.0, "sampling temperature for the samples (1.0 = the model's own distribution)", bounds="(0, 100]")
    sample_prompts: str = param("the film|this movie is|i found the acting|the director|it 's a|the story", "fixed prompts sampled before and after training, separated by '|'", nonempty=True)
    save_worse_model: bool = param(False, "save the model even when its validation loss ended worse than at the start, than its best, or than the model already saved")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_list("sample_prompts", self.sample_prompts, str, "prompts")


@dataclass
class RMConfig(BaseConfig):
    """Every hyperparameter of 2-RM Training.ipynb."""

    loss: str = param("bce", "'bce' (binary cross-entropy on the label) or 'pairwise' (Bradley-Terry on positive-vs-negative pairs)", choices=("bce", "pairwise"))
    compare_losses: bool = param(True, "also train a model with the other loss on the same data and steps, and compare")
    compare_max_steps: int = param(400, "steps for each model of the loss comparison", bounds="[1, inf)")
    batch_size: int = param(32, "sentences per step (pairs per step for the pairwise loss: batch_size / 2)", bounds="[2, inf)")
    learning_rate: float = param(3e-5, "peak AdamW learning rate", bounds="(0, 1)")
    lr_schedule: str = param("linear", "decay after warmup: 'cosine', 'linear' or 'constant'", choices=("cosine", "linear", "constant"))
    warmup_ratio: float = param(0.05, "share of the steps spent warming the learning rate up from 0", bounds="[0, 1)")
    num_epochs: float = param(2.0, "passes over the training sentences (fractions allowed)", bounds="(0, 1000]")
    weight_decay: float = param(0.01, "AdamW weight decay on matrices", bounds="[0, 1)")
    max_grad_norm: float = param(1.0, "gradients are clipped to this global L2 norm", bounds="(0, inf)")
    max_train_samples: int = param(0, "use only this many training sentences (0 = all)", bounds="[0, inf)")
    eval_sentences: int = param(0, "validation sentences scored during and after training (0 = all); fewer make short checks faster", bounds="[0, inf)")
    eval_every: int = param(500, "validate every this many steps", bounds="[1, inf)")
    prefix_lengths: str = param("2|4|8|16", "prefix lengths in tokens for the truncated-sentence accuracy, separated by '|'", nonempty=True)
    norm_samples: int = param(4000, "training sentences scored to record the score's mean and standard deviation (saved for notebook 3)", bounds="[2, inf)")
    save_worse_model: bool = param(False, "save the model even when its validation AUC ended worse than at the start, than its best, or than the model already saved")

    def __post_init__(self) -> None:
        super().__post_init__()
        lengths = _check_list("prefix_lengths", self.prefix_lengths, int, "whole numbers of tokens")
        _check(all(1 <= k < self.max_length for k in lengths),
               f"prefix_lengths={self.prefix_lengths!r}: each must be in [1, max_length - 1] = [1, {self.max_length - 1}].")


@dataclass
class PPOConfig(BaseConfig):
    """Every hyperparameter of 3-RLHF.ipynb."""

    sft_model_dir: str = param("{output_dir}/sft_model", "the SFT model from 1-SFT.ipynb (a folder, or the hub repo it was pushed to): the policy's start and the frozen reference", nonempty=True)
    reward_model_dir: str = param("{output_dir}/reward_model", "the reward model from 2-RM Training.ipynb (a folder, or the hub repo it was pushed to)", nonempty=True)
    policy_dir: str = param("{output_dir}/ppo_policy", "where the final PPO policy is saved", nonempty=True)
    checkpoint_dir: str = param("{output_dir}/ppo_checkpoint", "where training checkpoints are written (and resumed from)", nonempty=True)
    require_cuda: bool = param(True, "stop with a message when no CUDA GPU is present (set False, or device='cpu', to run on CPU anyway)")
    num_iterations: int = param(100, "PPO iterations: each samples a batch of episodes and optimises on it", bounds="[1, inf)")
    batch_size: int = param(256, "episodes (prompt + response) sampled per iteration", bounds="[2, inf)")
    minibatch_size: int = param(64, "episodes per gradient step; also the chunk size of the no-gradient passes over a batch", bounds="[1, inf)")
    ppo_epochs: int = param(4, "passes over each batch of episodes", bounds="[1, 100]")
    prompt_min_tokens: int = param(2, "shortest prompt, in tokens", bounds="[1, 1024]")
    prompt_max_tokens: int = param(8, "longest prompt, in tokens", bounds="[1, 1024]")
    response_length: int = param(24, "most tokens the policy may add; a response ends earlier at EOS", bounds="[1, 1024]")
    temperature: float = param(1.0, "sampling temperature, also used for the log-probs PPO optimises", bounds="(0, 100]")
    learning_rate: float = param(1.4e-5, "AdamW learning rate of policy and value head", bounds="(0, 1)")
    max_grad_norm: float = param(1.0, "gradients are clipped to this global L2 norm", bounds="(0, inf)")
    gamma: float = param(1.0, "discount factor of GAE (1.0: a sentence is short, nothing is discounted)", bounds="[0, 1]")
    lam: float = param(0.95, "lambda of GAE: 0 = one-step TD, 1 = Monte Carlo", bounds="[0, 1]")
    clip_range: float = param(0.2, "epsilon of the clipped policy loss: the ratio may move 1 +- epsilon", bounds="(0, 1)")
    clip_range_value: float = param(0.2, "the value may move this much from its old value before the loss is clipped", bounds="(0, inf)")
    vf_coef: float = param(0.1, "weight of the value loss in the total loss (the value head shares the policy's trunk)", bounds="[0, inf)")
    init_kl_coef: float = param(0.05, "beta: weight of the per-token KL penalty at the start", bounds="[0, 100]")
    adaptive_kl: bool = param(True, "adapt beta towards kl_target (Ziegler et al. 2019) or keep it fixed")
    kl_target: float = param(6.0, "KL to the reference, in nats per sequence, that the adaptive controller aims for", bounds="(0, inf)")
    kl_horizon: int = param(2560, "episodes over which the adaptive controller can move beta by about 22% (e^0.2); 2560 = 10 iterations of 256", bounds="[1, inf)")
    whiten_advantages: bool = param(True, "normalise advantages to mean 0, std 1 over each batch")
    normalize_scores: bool = param(True, "use (score - mean) / std with the statistics saved beside the reward model")
    missing_eos_penalty: float = param(1.0, "subtracted from the (normalised) score of a response that did not end with EOS", bounds="[0, 100]")
    eval_prompts: int = param(256, "held-out validation prompts for the SFT-vs-PPO evaluation (0 = all)", bounds="[0, inf)")
    eval_every: int = param(10, "evaluate the policy on the curve_prompts every this many iterations (the over-optimisation curve)", bounds="[1, inf)")
    curve_prompts: int = param(128, "held-out prompts of that periodic evaluation (the first of the evaluation prompts; 0 = no curve)", bounds="[0, inf)")
    samples_every: int = param(10, "show a sample table every this many iterations", bounds="[1, inf)")
    checkpoint_every: int = param(0, "write a checkpoint every this many iterations (0: by time alone, checkpoint_minutes)", bounds="[0, inf)")
    checkpoint_minutes: float = param(10.0, "also write one when this many minutes have passed since the last (0: off): what a recycled Colab runtime can lose at most", bounds="[0, inf)")
    resume: bool = param(True, "continue from checkpoint_dir when it holds a checkpoint")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.minibatch_size <= self.batch_size and self.batch_size % self.minibatch_size == 0,
               f"batch_size={self.batch_size} must be a multiple of minibatch_size={self.minibatch_size}.")
        _check(self.prompt_min_tokens <= self.prompt_max_tokens,
               f"prompt_min_tokens={self.prompt_min_tokens} is above prompt_max_tokens={self.prompt_max_tokens}.")
        _check(self.prompt_max_tokens + self.response_length <= 1024,
               f"prompt_max_tokens + response_length = {self.prompt_max_tokens + self.response_length}: GPT-2 knows 1024 positions.")


# What each profile changes. Only values: every profile runs the same lines of code.
PROFILE_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {
        "*": dict(output_dir="outputs/smoke", model_name="{output_dir}/base_model",
                  dataset_name="{output_dir}/data/sst2", max_length=32),
        "SFTConfig": dict(batch_size=32, learning_rate=3e-3, warmup_ratio=0.05, num_epochs=4.0,
                          max_train_samples=0, eval_every=50, num_eval_generations=32,
                          sample_max_new_tokens=16),
        "RMConfig": dict(batch_size=32, learning_rate=2e-3, num_epochs=2.0, max_train_samples=0,
                         compare_max_steps=60, eval_every=25, norm_samples=400, prefix_lengths="2|4|8"),
        "PPOConfig": dict(require_cuda=False, num_iterations=30, batch_size=64, minibatch_size=16,
                          ppo_epochs=4, response_length=12, learning_rate=1e-3, kl_horizon=1000,
                          eval_prompts=128, samples_every=10, checkpoint_every=10),
    },
    "cpu": {
        "*": dict(output_dir="outputs/cpu", model_name="{output_dir}/base_model", precision="auto",
                  figures_dir="images/cpu_profile"),
        "SFTConfig": dict(batch_size=64, learning_rate=2e-3, warmup_ratio=0.02, num_epochs=1.0,
                          eval_every=200, num_eval_generations=128),
        # The reward model's trunk starts from the random base model: a 1.3M-parameter SFT model that read SST-2 once
        # gave it nothing to reuse (validation accuracy from the SFT trunk 79.1 / 78.9 %, from the base model
        # 80.7 / 81.4 %, seeds 0 / 1 in the tuning runs). The full profile keeps the usual start, pretrained GPT-2.
        "RMConfig": dict(batch_size=64, learning_rate=1e-3, lr_schedule="cosine", warmup_ratio=0.1,
                         num_epochs=1.0, compare_max_steps=150, eval_every=200, norm_samples=2000),
        # A fixed KL coefficient of 0.12 (smaller ones traded the judge's share and distinct-2 for the reward model's
        # share: README, reward hacking). Learning rate 1.5e-4, from the tuning runs judged by VADER on the 871
        # held-out prompts (SFT 38.2 % positive): 120 iterations at 2e-4 reached 82.0 % but KL 7.3 and distinct-2
        # 0.73; 90 at 2e-4, 83.8 % with distinct-2 0.73; 75 at 2e-4, 73.2 %; 120 at 1.5e-4, 75.7 %, KL 4.7, 0.83.
        # The curve levels off after ~60 iterations at this rate while the reward model's share keeps rising.
        "PPOConfig": dict(require_cuda=False, num_iterations=120, batch_size=128, minibatch_size=32,
                          response_length=24, learning_rate=1.5e-4, init_kl_coef=0.12, adaptive_kl=False,
                          vf_coef=1.0, eval_prompts=0, samples_every=30, checkpoint_every=30),
    },
}
ALL_CONFIGS: tuple[type, ...] = (SFTConfig, RMConfig, PPOConfig)
RESERVED_ENV = {"PROFILE", "SMOKE"} | COLAB_SETTINGS
ENV_ALIASES = {"model": "model_name", "dataset": "dataset_name"}  # RLHF_MODEL, RLHF_DATASET


def _parse_env_value(name: str, raw: str, annotation: Any) -> Any:
    """Parse the text of an `RLHF_` variable into the type of the config field it overrides."""
    kind = {"int": int, "float": float, "bool": bool, "str": str}.get(annotation if isinstance(annotation, str) else getattr(annotation, "__name__", ""), str)
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
        raise ConfigError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind.__name__}; "
                          f"give a {kind.__name__} or unset the variable.") from None


def selected_profile(environ: Mapping[str, str] = os.environ) -> str:
    """The profile the environment asks for: RLHF_PROFILE, or 'smoke' when RLHF_SMOKE=1, else 'full'."""
    profile = environ.get(ENV_PREFIX + "PROFILE", "").strip().lower()
    smoke = environ.get(ENV_PREFIX + "SMOKE", "").strip().lower() in ("1", "true", "yes", "on")
    if profile and smoke and profile != "smoke":
        raise ConfigError(f"RLHF_SMOKE=1 and RLHF_PROFILE={profile} disagree: set only one of them.")
    profile = profile or ("smoke" if smoke else "full")
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
        if not key.startswith(ENV_PREFIX) or key[len(ENV_PREFIX):] in RESERVED_ENV:
            continue
        name = key[len(ENV_PREFIX):].lower()
        if name in ENV_ALIASES:
            if ENV_PREFIX + ENV_ALIASES[name].upper() in environ:
                raise ConfigError(f"{key} and {ENV_PREFIX}{ENV_ALIASES[name].upper()} are the same setting: set only one.")
            name = ENV_ALIASES[name]
        if name not in series_fields:
            close = difflib.get_close_matches(name, sorted(series_fields), n=3)
            hint = f" Did you mean {', '.join(ENV_PREFIX + c.upper() for c in close)}?" if close else ""
            raise ConfigError(f"{key} is not a setting of this series.{hint} Unset it, or see the "
                              f"Configuration cell for the names (RLHF_ + field name in capitals).")
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


def config_table(cfg: Any) -> "pd.DataFrame":
    """The config as a table: field, value, and what it means."""
    import pandas as pd
    rows = [(f.name, getattr(cfg, f.name), f.metadata.get("help", "")) for f in dataclasses.fields(cfg)]
    return pd.DataFrame(rows, columns=["field", "value", "meaning"]).set_index("field")


def split_list(text: str, kind: Callable[[str], Any] = str) -> list:
    """Split a '|'-separated config value into a list of `kind`."""
    return [kind(part.strip()) for part in text.split("|") if part.strip()]


# -----------------------------------------------------------------------------
# Device and precision

@dataclass(frozen=True)
class Precision:
    """How tensors are computed: the autocast dtype (None = fp32) and whether losses are scaled."""

    device: torch.device
    dtype: torch.dtype | None
    use_grad_scaler: bool

    @property
    def name(self) -> str:
        """'bf16', 'fp16' or 'fp32'."""
        return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[self.dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        """A context that runs matrix products in the reduced dtype (a no-op in fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def grad_scaler(self, init_scale: float = 2.0 ** 16) -> torch.amp.GradScaler:
        """A loss scaler, active only for fp16 (whose small gradients would underflow to 0).

        The loss is multiplied by the scale before backward; when a gradient overflows (inf or NaN) the
        scaler skips that optimizer step and halves the scale, and it doubles it after 2,000 good steps.
        """
        return torch.amp.GradScaler(self.device.type, init_scale=init_scale, enabled=self.use_grad_scaler)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA when present, else CPU; 'cuda' without a GPU is an error that says what to do."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RLHFError("device='cuda' but PyTorch sees no CUDA GPU. In Colab: Runtime > Change runtime "
                        "type > T4 GPU. Elsewhere: set RLHF_DEVICE=cpu (slow) or RLHF_PROFILE=cpu.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX)."""
    capability = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else ""
    if "AMX" in capability:
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(device: torch.device, name: str = "auto", profile: str = "full") -> Precision:
    """Pick the precision: bf16 on Ampere or newer, fp16 + loss scaling on older GPUs (T4), fp32 on CPU.

    The 'cpu' profile uses bf16 autocast on CPUs with native bf16 (measured faster there). fp16 is also
    accepted on a CPU when asked for by name, so that its loss-scaling path can be tested without a GPU.
    """
    if name == "auto":
        if device.type == "cuda":
            name = "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"
        else:
            name = "bf16" if profile == "cpu" and cpu_supports_bf16() else "fp32"
    # fp16 on a CPU runs the T4's code path (fp16 autocast, loss scaling, skipped steps) where a test can reach
    # it; PyTorch supports both on the CPU, though slowly. 'auto' never picks it there.
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[name]
    return Precision(device=device, dtype=dtype, use_grad_scaler=(name == "fp16"))


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (CPU and every GPU); returns a CPU generator for data order."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


def describe_device(device: torch.device, precision: Precision) -> str:
    """One line naming the device and the precision, for the setup cell."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        where = f"CUDA GPU {props.name} ({props.total_memory / 2**30:.0f} GiB)"
    else:
        threads = torch.get_num_threads()
        where = f"CPU ({threads} thread{'s' if threads != 1 else ''})"
    return f"device: {where}; precision: {precision.name}" + (" with loss scaling" if precision.use_grad_scaler else "")


# -----------------------------------------------------------------------------
# Data

DATA_EXTENSIONS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def _hub_error(what: str, name: str, error: Exception) -> HubUnavailableError:
    """The one message for anything that had to come from an unreachable hub."""
    return HubUnavailableError(
        f"Could not load {what} {name!r} from the Hugging Face hub ({type(error).__name__}). "
        "Check the internet connection (in Colab: Runtime > Restart), or run offline: "
        "RLHF_SMOKE=1 for the tiny built-in profile, or point RLHF_MODEL / RLHF_DATASET "
        "at local copies (a folder saved with save_pretrained; a folder with train/validation files).")


def _data_file_is_empty(path: Path) -> bool:
    """True when a data file holds no rows (a CSV with only its header line counts as empty)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        return pq.ParquetFile(path).metadata.num_rows == 0
    with open(path, encoding="utf-8") as f:
        non_blank_lines = sum(1 for line in f if line.strip())
    return non_blank_lines <= (1 if path.suffix == ".csv" else 0)


def _check_json_lines(path: Path) -> None:
    """Raise a DatasetSchemaError naming the file and line of the first line that is not a JSON object."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DatasetSchemaError(f"{path}, line {number}: not valid JSON ({error.msg}, column {error.colno}). "
                                         "Each line must be one object such as {\"sentence\": \"...\", \"label\": 1}; "
                                         "fix or delete that line.") from None
            if not isinstance(row, dict):
                raise DatasetSchemaError(f"{path}, line {number}: a JSON {type(row).__name__}, not an object such as "
                                         "{\"sentence\": \"...\", \"label\": 1}; fix or delete that line.")


def load_sst2(name_or_path: str, require_label: bool = True) -> "datasets.DatasetDict":
    """SST-2 from the hub (`stanfordnlp/sst2`) or a local folder with train/validation files, checked."""
    import datasets
    path = Path(name_or_path)
    if path.is_dir():
        data_files, kinds = {}, set()
        for split in ("train", "validation"):
            found = sorted(p for p in path.iterdir() if p.stem == split and p.suffix in DATA_EXTENSIONS)
            if not found:
                raise DatasetSchemaError(f"{path} has no '{split}' file: expected {split}.jsonl, "
                                         f"{split}.csv or {split}.parquet beside the other split.")
            if _data_file_is_empty(found[0]):  # the datasets library fails on these with an obscure error
                raise DatasetSchemaError(f"{found[0]} holds no rows: the '{split}' split needs at least one sentence.")
            if DATA_EXTENSIONS[found[0].suffix] == "json":
                _check_json_lines(found[0])  # the datasets library would not say which line is broken
            data_files[split] = str(found[0])
            kinds.add(DATA_EXTENSIONS[found[0].suffix])
        if len(kinds) > 1:
            raise DatasetSchemaError(f"{path}: train and validation must have the same format, found {sorted(kinds)}.")
        try:
            dataset = datasets.load_dataset(kinds.pop(), data_files=data_files)
        except Exception as error:  # DatasetGenerationError and friends: name the files and the cause
            if not type(error).__name__.endswith("GenerationError"):
                raise
            cause = error.__cause__ or error.__context__ or error
            raise DatasetSchemaError(f"{path}: the data files could not be read ({type(cause).__name__}: "
                                     f"{str(cause)[:300]}). Check {', '.join(data_files.values())}.") from error
    elif looks_like_local_path(name_or_path):
        raise DatasetSchemaError(f"Dataset folder {name_or_path!r} does not exist. Check RLHF_DATASET, "
                                 "or run the notebook that builds it first.")
    else:
        try:
            dataset = datasets.load_dataset(name_or_path)
        except (ConnectionError, OSError, ValueError) as error:
            if "offline" in str(error).lower() or "couldn't reach" in str(error).lower() or not HUB_ONLINE:
                raise _hub_error("the dataset", name_or_path, error) from error
            raise
    return check_sst2(dataset, require_label=require_label)


def check_sst2(dataset: Any, require_label: bool = True) -> Any:
    """Raise a DatasetSchemaError naming the missing split, missing column or bad label, else return it.

    A `label` column is checked whenever it is there, even where the notebook does not need it.
    """
    for split in ("train", "validation"):
        if split not in dataset:
            raise DatasetSchemaError(f"The dataset has no '{split}' split (it has {list(dataset)}); "
                                     "SST-2 needs 'train' and 'validation'.")
        columns = dataset[split].column_names
        needed = ["sentence"] + (["label"] if require_label else [])
        for column in needed:
            if column not in columns:
                raise DatasetSchemaError(f"The '{split}' split has no '{column}' column (columns: {columns}). "
                                         "Rename the text column to 'sentence' and the 0/1 column to 'label'.")
        if len(dataset[split]) == 0:
            raise DatasetSchemaError(f"The '{split}' split is empty: it needs at least one sentence.")
        sentences = dataset[split]["sentence"]
        not_text = next((i for i, s in enumerate(sentences) if not isinstance(s, str)), None)
        if not_text is not None:
            raise DatasetSchemaError(f"The '{split}' split's sentence {not_text} is {sentences[not_text]!r}, not text. "
                                     "Every 'sentence' must be a string.")
        if not any(s.strip() for s in sentences):
            raise DatasetSchemaError(f"Every sentence of the '{split}' split is empty: it needs at least one "
                                     "sentence with text.")
        if "label" in columns:
            labels = set(dataset[split].unique("label"))
            if not labels <= {0, 1}:
                shown = sorted(labels, key=repr)[:10]
                raise DatasetSchemaError(f"The '{split}' split has labels {shown}; expected 0 "
                                         "(negative) and 1 (positive). Map the labels to 0/1 first.")
    return dataset


def tokenize_sentences(sentences: Sequence[str], tokenizer: Any, max_length: int, add_eos: bool = True) -> list[list[int]]:
    """Token ids of each sentence, cut to `max_length`, with EOS as the last token when `add_eos`."""
    ids = tokenizer([s.strip() for s in sentences], add_special_tokens=False)["input_ids"]
    if not add_eos:
        return [row[:max_length] for row in ids]
    return [row[: max_length - 1] + [tokenizer.eos_token_id] for row in ids]


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token lists to one length: returns (input_ids, attention_mask), both (B, T)."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    for i, row in enumerate(rows):
        span = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
        input_ids[i, span] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, span] = 1
    return input_ids, attention_mask


def lm_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Labels for the causal-LM loss: the input ids, with -100 (ignored) where attention_mask is 0.

    Masking by attention mask, not by `input_ids == pad_token_id`, keeps the EOS in the loss even
    though GPT-2's pad token *is* its EOS token: that is how the model learns to stop.
    """
    return input_ids.masked_fill(attention_mask == 0, -100)  # (B, T)


def length_grouped_batches(lengths: Sequence[int], batch_size: int, generator: torch.Generator | None = None,
                           group_factor: int = 50, drop_last: bool = False, shuffle: bool = True) -> list[list[int]]:
    """Shuffled batches of indices whose lengths are close, so short sentences are not padded to long ones.

    Indices are shuffled, cut into groups of `group_factor` batches, sorted by length inside each group,
    split into batches, and the batches are shuffled again: random order, little padding.
    With shuffle=False (for evaluation) the batches simply follow the sorted lengths, shortest first.
    """
    if not shuffle:
        ordered = sorted(range(len(lengths)), key=lambda i: lengths[i])
        batches = [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]
        return [b for b in batches if len(b) == batch_size] if drop_last else batches
    order = torch.randperm(len(lengths), generator=generator).tolist()
    group = batch_size * group_factor
    batches = []
    for start in range(0, len(order), group):
        chunk = sorted(order[start:start + group], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    if drop_last:
        batches = [b for b in batches if len(b) == batch_size]
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffled]


def make_prompts(sentences: Sequence[str], tokenizer: Any, min_tokens: int = 2, max_tokens: int = 8,
                 seed: int = 0) -> list[list[int]]:
    """PPO prompts: each sentence cut to its first k tokens, k drawn uniformly from [min_tokens, max_tokens].

    Sentences shorter than min_tokens + 1 tokens are skipped (they would leave nothing to continue).
    """
    rng = random.Random(seed)
    prompts = []
    for ids in tokenize_sentences(sentences, tokenizer, max_length=10_000, add_eos=False):
        if len(ids) < min_tokens + 1:
            continue
        k = rng.randint(min_tokens, max_tokens)
        prompts.append(ids[: min(k, len(ids) - 1)])
    return prompts


def make_preference_pairs(labels: Sequence[int], seed: int = 0) -> list[tuple[int, int]]:
    """Pairs (chosen, rejected) of indices: a positive sentence preferred over a negative one, each used once."""
    rng = random.Random(seed)
    positives = [i for i, y in enumerate(labels) if y == 1]
    negatives = [i for i, y in enumerate(labels) if y == 0]
    rng.shuffle(positives)
    rng.shuffle(negatives)
    return list(zip(positives, negatives))


# -----------------------------------------------------------------------------
# Models

def looks_like_local_path(name_or_path: str) -> bool:
    """True for paths ('./x', '/x', 'a/b/c', 'outputs/x' when outputs/ exists), False for hub ids like 'gpt2' or 'org/name'."""
    path = Path(name_or_path)
    return (path.is_absolute() or name_or_path.startswith(".") or name_or_path.count("/") > 1
            or (len(path.parts) > 1 and Path(path.parts[0]).is_dir()))


def _load_pretrained(loader: Callable[..., Any], name_or_path: str, what: str, **kwargs: Any) -> Any:
    """Call a `from_pretrained` loader, turning hub failures and half-written folders into clear errors."""
    import transformers
    transformers.logging.set_verbosity_error()  # no per-file progress bars or config chatter in the notebooks
    transformers.logging.disable_progress_bar()
    path = Path(name_or_path)
    if path.is_dir() or looks_like_local_path(name_or_path):
        recover_checkpoint(path)  # a save killed part-way leaves the folder under another name
    if path.is_dir():
        verify_checkpoint(path)
    elif looks_like_local_path(name_or_path):
        raise CheckpointError(f"{what.capitalize()} folder {name_or_path!r} does not exist. Check the path "
                              "(RLHF_MODEL, RLHF_SFT_MODEL_DIR, ...), or run the notebook that writes it first.")
    try:
        return loader(name_or_path, **kwargs)
    except OSError as error:
        if not path.is_dir() and ("connect" in str(error).lower() or "offline" in str(error).lower() or not HUB_ONLINE):
            raise _hub_error(what, name_or_path, error) from error
        raise


def load_tokenizer(name_or_path: str, padding_side: str = "right") -> Any:
    """The tokenizer, with a pad token (GPT-2 has none: EOS doubles as pad) and the given padding side."""
    from transformers import AutoTokenizer
    tokenizer = _load_pretrained(AutoTokenizer.from_pretrained, name_or_path, "the tokenizer")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def load_causal_lm(name_or_path: str, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> nn.Module:
    """A causal language model (GPT-2 and friends) in fp32 unless `dtype` says otherwise, on `device`."""
    from transformers import AutoModelForCausalLM
    model = _load_pretrained(AutoModelForCausalLM.from_pretrained, name_or_path, "the model",
                             dtype=dtype or torch.float32)
    return use_fused_gelu(model).to(device)


def vocabulary_fingerprint(tokenizer: Any) -> str:
    """A short hash of the tokenizer's vocabulary: equal fingerprints mean the same token ids."""
    items = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count only real tokens, so left padding does not shift positions.

    A left-padded row [pad, pad, a, b] gets positions [0, 0, 0, 1]: `a` sits at position 0 as it
    would alone. `generate` does the same; a forward pass without these would see `a` at 2.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)


def last_real_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of the mask (right or left padding alike), (B,)."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(-1)  # (B,)


def attention_mask_4d(model: nn.Module, attention_mask: torch.Tensor, query_length: int = 0) -> torch.Tensor:
    """The (B, 1, Q, K) boolean mask of SDPA attention: a query sees the real (mask 1) keys at or before it.

    Hugging Face models build this same mask from the 2D (B, K) one, but first read the 2D mask's values
    (is any 0?), which on a GPU is a sync: the CPU waits for the GPU on every forward pass. Given the 4D
    mask, they use it as it is. query_length=Q > 0: the queries are the last Q of the K positions
    (decoding with the KV cache); 0: all K. Models with other attention (or sliding windows) get the 2D mask.
    """
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or getattr(config, "sliding_window", None):
        return attention_mask
    keys = attention_mask.shape[-1]
    key_positions = torch.arange(keys, device=attention_mask.device)  # (K,)
    query_positions = key_positions[keys - (query_length or keys):]  # (Q,)
    causal = key_positions[None, :] <= query_positions[:, None]  # (Q, K)
    return causal[None, None] & attention_mask.bool()[:, None, None, :]  # (B, 1, Q, K)


class ScalarHead(nn.Module):
    """A linear map from a hidden state to one scalar: h (..., H) -> (...)."""

    def __init__(self, hidden_size: int, init_std: float | None = None):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        # std 1/sqrt(H + 1) keeps the initial outputs ~N(0, 1) [Ziegler19]; 0 starts a value head at V = 0.
        std = 1 / math.sqrt(hidden_size + 1) if init_std is None else init_std
        nn.init.normal_(self.linear.weight, std=std) if std > 0 else nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (...)"""
        return self.linear(hidden).squeeze(-1)


class ScalarHeadModel(nn.Module):
    """A GPT-2 trunk with a scalar head: one scalar per position, (B, T).

    Read at the last real token it is the reward model's score r(x); read at every response position
    it is a value function V(s_t).
    """

    def __init__(self, trunk: nn.Module, init_std: float | None = None):
        super().__init__()
        self.trunk = trunk
        self.head = ScalarHead(trunk.config.hidden_size, init_std)

    @property
    def config(self) -> Any:
        """The trunk's transformers config."""
        return self.trunk.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Scalars for every position, (B, T); position ids follow the mask, so padding side does not matter."""
        hidden = self.trunk(input_ids=input_ids, attention_mask=attention_mask_4d(self.trunk, attention_mask),
                            position_ids=positions_from_mask(attention_mask)).last_hidden_state  # (B, T, H)
        return self.head(hidden).float()  # (B, T)

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The score r(x): the scalar at each row's last real token, (B,)."""
        values = self(input_ids, attention_mask)  # (B, T)
        return values.gather(1, last_real_index(attention_mask)[:, None]).squeeze(1)  # (B,)


class PolicyWithValueHead(nn.Module):
    """The PPO policy: a causal LM plus a scalar value head on its last hidden state (shared trunk)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        self.value_head = ScalarHead(lm.config.hidden_size, init_std=0.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                logits_to_keep: int | torch.Tensor = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, T, V) and values (B, T) in one pass.

        As in Hugging Face models, logits_to_keep=k > 0 computes the logits of the last k positions only,
        and a tensor of positions (K,) those positions only, (B, K, V): the LM head (H x V) is the largest
        matrix product of a small model, and PPO reads its output on the response only.
        """
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask_4d(self.lm, attention_mask),
                      position_ids=positions_from_mask(attention_mask), output_hidden_states=True,
                      logits_to_keep=logits_to_keep)
        return out.logits, self.value_head(out.hidden_states[-1]).float()


def build_reward_model(trunk_name_or_path: str, device: torch.device | str = "cpu") -> ScalarHeadModel:
    """A reward model to train: a pretrained trunk (no LM head) and a freshly initialised scalar head."""
    from transformers import AutoModel
    trunk = _load_pretrained(AutoModel.from_pretrained, trunk_name_or_path, "the model", dtype=torch.float32)
    return ScalarHeadModel(use_fused_gelu(trunk)).to(device)


@torch.no_grad()
def score_sentences(reward_model: ScalarHeadModel, tokenizer: Any, sentences: Sequence[str], batch_size: int = 64,
                    precision: Precision | None = None, max_length: int = 64) -> torch.Tensor:
    """Scores of sentences (tokens cut to max_length - 1, then EOS), in eval mode: (N,) float32 on CPU.

    Sentences are scored in batches of similar length (less padding) and returned in their own order;
    the model's train/eval mode is restored afterwards. max_length = k + 1 scores the first k tokens.
    """
    ids = tokenize_sentences(sentences, tokenizer, max_length)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    device = next(reward_model.parameters()).device
    autocast = precision.autocast if precision else contextlib.nullcontext
    rewards = torch.empty(len(ids), dtype=torch.float32)  # (N,)
    was_training = reward_model.training
    reward_model.eval()  # no dropout: the same sentence always gets the same reward
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            input_ids, attention_mask = pad_batch([ids[i] for i in batch], tokenizer.pad_token_id)  # (b, T)
            with autocast():
                scores = reward_model.score(input_ids.to(device), attention_mask.to(device))  # (b,)
            rewards[batch] = scores.float().cpu()
    finally:
        reward_model.train(was_training)
    return rewards


def use_fused_gelu(model: nn.Module) -> nn.Module:
    """Swap GPT-2's GELU, which runs as eight elementwise tensor ops, for PyTorch's one-kernel version, in place.

    Both compute 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))) and agree to ~1e-7; the fused one is
    2-5x faster (backward, forward), which matters on a CPU, where a small model spends much of its time in such ops.
    The loaders of this module call it; the saved config still names GPT-2's own "gelu_new".
    """
    from transformers.activations import NewGELUActivation
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, NewGELUActivation):
                setattr(module, name, nn.GELU(approximate="tanh"))
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


# -----------------------------------------------------------------------------
# Generation

def sample_next_token(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample one token per row from softmax(logits / temperature), optionally among the top_k: (B, V) -> (B,).

    Inverse-CDF sampling: one uniform number u per row picks the first token whose cumulative
    probability exceeds u. It draws the same distribution as torch.multinomial, which draws one
    random number per vocabulary entry (~30x slower for 64 x 1024 logits on a CPU). Sums run in float64 (exact enough
    that no token's share is rounded away), and a token of probability 0 is never picked.
    """
    logits = logits.float() if temperature == 1.0 else logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    cdf = probs.cumsum(-1, dtype=torch.float64)  # (B, V): P(token <= v)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=torch.float64)  # (B, 1)
    # the first v with cdf[v] > u * cdf[-1] (cdf[-1] is 1 up to rounding), so u never lands past the end
    token = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)  # (B, 1)
    return token.squeeze(-1).clamp_(max=probs.shape[-1] - 1)  # (B,)


def kv_cache_name(lm: nn.Module) -> str:
    """The name of the KV-cache argument and output: `cache` from transformers 5.24 on, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"


@torch.no_grad()
def generate(lm: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int,
             eos_token_id: int, pad_token_id: int, temperature: float = 1.0, top_k: int = 0,
             generator: torch.Generator | None = None, precision: Precision | None = None,
             stop_check_every: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample continuations of left-padded prompts with the KV cache: returns (responses, response_mask), (B, R).

    The prompt is read once; after that each step feeds only the newest token and reuses the cached
    keys and values of everything before it. A row that has produced EOS keeps EOS as its last real
    token; later positions hold pad_token_id and 0 in the mask. R <= max_new_tokens: the loop stops
    once every row has finished (checked every `stop_check_every` steps to limit GPU syncs).
    """
    autocast = precision.autocast() if precision else contextlib.nullcontext()
    batch = prompt_ids.shape[0]
    attention_mask = prompt_mask.long()
    with autocast:  # logits_to_keep=1: only the last position's logits are needed, not (B, P, V)
        out = lm(input_ids=prompt_ids, attention_mask=attention_mask_4d(lm, attention_mask),
                 position_ids=positions_from_mask(attention_mask), use_cache=True, logits_to_keep=1)
    cache_name = kv_cache_name(lm)
    cache, next_logits = getattr(out, cache_name), out.logits[:, -1]  # the KV cache, and (B, V)
    next_position = attention_mask.sum(-1, keepdim=True)  # (B, 1): real tokens so far
    finished = torch.zeros(batch, dtype=torch.bool, device=prompt_ids.device)  # (B,)
    tokens, masks = [], []
    for step in range(max_new_tokens):
        token = sample_next_token(next_logits, temperature, top_k, generator)  # (B,)
        token = token.masked_fill(finished, pad_token_id)
        masks.append(~finished)
        tokens.append(token)
        finished = finished | (token == eos_token_id)
        if step + 1 == max_new_tokens or ((step + 1) % stop_check_every == 0 and bool(finished.all())):
            break
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, 1)], dim=1)
        with autocast:  # the new token attends to every real token so far: a (B, 1, 1, K) mask
            out = lm(input_ids=token[:, None], attention_mask=attention_mask_4d(lm, attention_mask, query_length=1),
                     position_ids=next_position, use_cache=True, **{cache_name: cache})
        cache, next_logits = getattr(out, cache_name), out.logits[:, -1]
        next_position = next_position + 1
    responses = torch.stack(tokens, dim=1)  # (B, R)
    response_mask = torch.stack(masks, dim=1).long()  # (B, R)
    return responses, response_mask


def decode_responses(tokenizer: Any, responses: torch.Tensor, response_mask: torch.Tensor) -> list[str]:
    """Text of each response (masked tokens only, EOS dropped)."""
    texts = []
    for row, mask in zip(responses.tolist(), response_mask.tolist()):
        ids = [t for t, m in zip(row, mask) if m and t != tokenizer.eos_token_id]
        texts.append(tokenizer.decode(ids))
    return texts


def ends_with_eos(responses: torch.Tensor, response_mask: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Whether each response's last real token is EOS, (B,) bool."""
    last = responses.gather(1, last_real_index(response_mask)[:, None]).squeeze(1)  # (B,)
    return (last == eos_token_id) & (response_mask.sum(1) > 0)


def sample_continuations(lm: nn.Module, tokenizer: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                         temperature: float = 1.0, precision: Precision | None = None, seed: int = 0,
                         batch_size: int = 64) -> tuple[list[str], torch.Tensor]:
    """Sample one continuation per prompt (lists of token ids) in left-padded batches, in eval mode.

    Returns the continuations' text (EOS dropped) and whether each ended with EOS, (N,) bool on the CPU.
    A fixed `seed` draws the same random numbers each call, so before/after comparisons sample alike.
    """
    device = next(lm.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = lm.training
    lm.eval()
    texts, ended = [], []
    try:
        for start in range(0, len(prompts), batch_size):
            prompt_ids, prompt_mask = pad_batch(prompts[start:start + batch_size], tokenizer.pad_token_id, side="left")
            responses, response_mask = generate(lm, prompt_ids.to(device), prompt_mask.to(device), max_new_tokens,
                                                tokenizer.eos_token_id, tokenizer.pad_token_id, temperature=temperature,
                                                generator=generator, precision=precision)  # (B, R) each
            texts += decode_responses(tokenizer, responses, response_mask)
            ended.append(ends_with_eos(responses, response_mask, tokenizer.eos_token_id).cpu())
    finally:
        lm.train(was_training)
    return texts, torch.cat(ended) if ended else torch.zeros(0, dtype=torch.bool)


# -----------------------------------------------------------------------------
# PPO math, and the evaluation of notebooks 2 and 3. Tensors are (B, T); `mask` is 1 on response tokens.

def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[labels] per token: (B, T, V), (B, T) -> (B, T), computed in fp32."""
    # log p(y) = logit_y - log sum_v exp(logit_v); log_softmax computes it for every v in one fused kernel
    # (faster than logsumexp, which runs as several separate passes), then gather picks y
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per token: (B, T, V) -> (B, T)."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    # H = -sum_v p_v log p_v
    return -(logp.exp() * logp).sum(-1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over the positions where mask is 1 (0 where the mask is empty)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Population variance of x over the masked positions (0 for a single element, not NaN)."""
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked positions; keeps the mean when shift_mean=False; 0 outside the mask."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(x.dtype)


def compute_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                    mask: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: -kl_coef * KL on every response token, plus the score on the last one [Ziegler19 eq. 2].

    scores (B,); the rest (B, T). Returns (rewards, kl), both (B, T) and 0 outside the mask.
    """
    mask = mask.to(logprobs.dtype)
    # KL_t = log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t), a one-sample estimate of the KL
    kl = (logprobs - ref_logprobs) * mask  # (B, T)
    rewards = -kl_coef * kl  # (B, T)
    has_tokens = mask.sum(1) > 0  # (B,)
    last = last_real_index(mask)  # (B,)
    rewards = rewards.scatter_add(1, last[:, None], (scores * has_tokens).to(rewards.dtype)[:, None])
    return rewards, kl


def compute_gae(values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor,
                gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns by generalised advantage estimation [Schulman16 eq. 16]: (B, T) each.

    Backwards over the masked tokens of each row:
        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}
    where t+1 is the row's next masked token, and V = A = 0 after its last one (the episode ended).
    returns = advantages + values (before any whitening); both are 0 outside the mask.
    """
    mask = mask.to(values.dtype)
    batch, length = values.shape
    advantages = torch.zeros_like(values)
    next_value = values.new_zeros(batch)  # V of the next masked token; 0 past the end
    next_advantage = values.new_zeros(batch)
    for t in reversed(range(length)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        m = mask[:, t]
        advantages[:, t] = advantage * m
        next_value = m * values[:, t] + (1 - m) * next_value  # skip over unmasked positions
        next_advantage = m * advantage + (1 - m) * next_advantage
    returns = (advantages + values) * mask
    return advantages, returns


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, clip_range: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped surrogate loss [Schulman17 eq. 7], as a masked mean over tokens, and its statistics."""
    log_ratio = logprobs - old_logprobs
    # r_t(theta) = pi_theta(y_t | s_t) / pi_old(y_t | s_t)
    ratio = torch.exp(log_ratio)
    # L = max(-A r, -A clip(r, 1 - eps, 1 + eps)): the pessimistic (larger) of the two losses
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            # k3 estimator of KL(pi_old || pi_theta): (r - 1) - log r >= 0
            "approx_kl": masked_mean(ratio - 1 - log_ratio, mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    return loss, stats


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                   mask: torch.Tensor, clip_range_value: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped value loss of PPO implementations (baselines' ppo2; [Schulman17] eq. 9 has it unclipped):
    0.5 * masked mean of max((V - R)^2, (clip(V, V_old +- eps) - R)^2)."""
    values_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    unclipped = (values - returns) ** 2
    clipped = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped > unclipped).float(), mask)}
    return loss, stats


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var(R - V) / Var(R) over masked tokens: 1 = perfect values, 0 = no better than a constant."""
    return 1 - masked_var(returns - values, mask) / masked_var(returns, mask).clamp(min=1e-8)


class AdaptiveKLController:
    """beta that moves towards a target KL [Ziegler19 sec. 2.2]: beta *= 1 + clip(KL/target - 1, +-0.2) * n/horizon."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = float(init_kl_coef), float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Raise beta when the KL is above target, lower it when below, by at most 20% per horizon."""
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        """The coefficient, for checkpoints."""
        return {"value": self.value}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        """Restore the coefficient from a checkpoint."""
        self.value = float(state["value"])


class FixedKLController(AdaptiveKLController):
    """A beta that never changes, with the same interface as AdaptiveKLController."""

    def __init__(self, kl_coef: float):
        super().__init__(kl_coef, target=1.0, horizon=1)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Keep beta as it is."""


# PPO passes over [left-padded prompt | response]: input_ids (B, P + R), response_start = P.
# The logits at position t predict token t + 1, so response token i (at P + i) is read at P + i - 1.

def response_positions(input_ids: torch.Tensor, response_start: int) -> torch.Tensor:
    """Positions whose logits predict the response tokens, P - 1 ... P + R - 2: (R,), for `logits_to_keep`.

    Computing the LM head there only skips the prompt positions' logits, which PPO never reads.
    """
    return torch.arange(response_start - 1, input_ids.shape[1] - 1, device=input_ids.device)  # (R,)


def _in_chunks(fn: Callable[[slice], tuple], batch: int, chunk_size: int | None) -> tuple:
    """fn(rows) for consecutive slices of at most chunk_size rows, its outputs concatenated along dim 0.

    A no-gradient pass over a whole rollout batch holds (B, R, V) logits, several copies of them while
    log-softmax and entropy are computed: at GPT-2's 50,257-token vocabulary, 256 episodes of 24 tokens make
    each copy 1.2 GB in fp32. In chunks, the largest temporary is set by chunk_size, not by B.
    """
    if not chunk_size or chunk_size >= batch:
        return fn(slice(0, batch))
    parts = [fn(slice(start, start + chunk_size)) for start in range(0, batch, chunk_size)]
    return tuple(None if part[0] is None else torch.cat(part) for part in zip(*parts))


def policy_forward(policy: PolicyWithValueHead, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   response_start: int, temperature: float = 1.0, with_entropy: bool = True,
                   chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One pass of the policy: log-probs of the response tokens, values V(s_t) and entropy, each (B, R).

    Logits are divided by the sampling temperature, so the log-probs are those of the distribution the
    tokens were drawn from. V(s_t) is read where token t is predicted (the state before it). Position
    ids follow the mask (`PolicyWithValueHead.forward`). The entropy is a statistic: it carries no gradient;
    with_entropy=False skips it (None), e.g. in the minibatch passes, where it would be discarded.
    chunk_size: rows per pass, for the no-gradient pass over a whole batch (`_in_chunks`); the results are the same.
    """
    predicting = response_positions(input_ids, response_start)  # (R,)

    def rows(r: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        logits, values = policy(input_ids[r], attention_mask[r], logits_to_keep=predicting)  # (b, R, V), (b, P + R)
        if temperature != 1.0:
            logits = logits / temperature
        logprobs = logprobs_from_logits(logits, input_ids[r, response_start:])  # (b, R)
        entropy = None
        if with_entropy:
            with torch.no_grad():
                entropy = entropy_from_logits(logits)  # (b, R)
        return logprobs, values[:, response_start - 1:-1], entropy

    return _in_chunks(rows, input_ids.shape[0], chunk_size)


def response_logprobs(lm: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      response_start: int, temperature: float = 1.0, chunk_size: int | None = None) -> torch.Tensor:
    """Log-probs of the response tokens under a plain causal LM (the frozen reference), (B, R); in chunks of rows
    when chunk_size is given (`_in_chunks`)."""
    predicting = response_positions(input_ids, response_start)  # (R,)

    def rows(r: slice) -> tuple[torch.Tensor]:
        logits = lm(input_ids=input_ids[r], attention_mask=attention_mask_4d(lm, attention_mask[r]),
                    position_ids=positions_from_mask(attention_mask[r]), logits_to_keep=predicting).logits  # (b, R, V)
        if temperature != 1.0:
            logits = logits / temperature
        return (logprobs_from_logits(logits, input_ids[r, response_start:]),)  # (b, R)

    return _in_chunks(rows, input_ids.shape[0], chunk_size)[0]


def score_responses(reward_model: ScalarHeadModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                    responses: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Raw reward-model scores of prompt + response, read at each row's last real token, (B,)."""
    input_ids = torch.cat([prompt_ids, responses], dim=1)  # (B, P + R)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)  # (B, P + R)
    return reward_model.score(input_ids, attention_mask)  # (B,)


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct-n: distinct word n-grams / all word n-grams over the texts (each text's own n-grams; 0 if none).

    1.0 = no n-gram repeats anywhere; a policy that collapses onto a few phrases scores near 0.
    Words are whitespace-separated, as in SST-2's tokenised text.
    """
    grams = [tuple(words[i:i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


class SentimentJudge:
    """An independent judge of sentiment: VADER (Hutto and Gilbert, 2014), a rule-based lexicon of ~7,500 words
    rated by people, with rules for negation, intensifiers and "but". Nothing in this series trained it and it
    never sees PPO's training, so it can disagree with the reward model PPO optimises against.

    `scores` gives VADER's compound score in [-1, 1]; `positive` applies VADER's own threshold (> 0.05).
    Its blind spots are its own: it likes strings of positive words however they are strung together.
    """

    name = "VADER"
    threshold = 0.05

    def __init__(self) -> None:
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError as error:
            raise RLHFError("The independent judge needs the vaderSentiment package (its lexicon ships with it, no "
                            "download): pip install vaderSentiment, or pip install -r requirements.txt.") from error
        self._analyzer = SentimentIntensityAnalyzer()

    def scores(self, texts: Sequence[str]) -> list[float]:
        """VADER's compound score of each text, in [-1, 1]."""
        return [self._analyzer.polarity_scores(text)["compound"] for text in texts]

    def positive(self, texts: Sequence[str]) -> list[bool]:
        """Whether the judge calls each text positive (compound > 0.05)."""
        return [score > self.threshold for score in self.scores(texts)]


@torch.no_grad()
def evaluate_policy(lm: nn.Module, ref_lm: nn.Module, reward_model: ScalarHeadModel, tokenizer: Any,
                    prompts: Sequence[Sequence[int]], max_new_tokens: int, temperature: float = 1.0,
                    seed: int = 0, batch_size: int = 64, precision: Precision | None = None,
                    threshold: float = 0.0, judge: SentimentJudge | None = None,
                    chunk_size: int | None = None) -> tuple[dict[str, float], "pd.DataFrame"]:
    """Sample one response per held-out prompt and measure it; returns (summary, one row per prompt).

    The same prompts, seed and temperature give two policies the same random numbers. Per row: the reward
    model's raw score of prompt + response and whether it is above `threshold` (saved by notebook 2: 0 for
    BCE, a median for a pairwise model), the judge's score of the same text, whether the response ends with
    EOS, the KL to `ref_lm` (sum over response tokens of log pi - log pi_ref, at `temperature`) and the
    reference's negative log-likelihood at temperature 1. Summary: the means and shares of those, the
    reference perplexity exp(total NLL / tokens), the mean response length and distinct-2 (`distinct_n`).
    Log-prob passes run in chunks of `chunk_size` rows (default: batch_size).
    """
    import pandas as pd
    device = next(lm.parameters()).device
    autocast = precision.autocast if precision else contextlib.nullcontext
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = lm.training
    lm.eval()
    rows: dict[str, list] = {k: [] for k in ("prompt", "response", "raw_score", "ends_with_eos", "kl", "ref_nll", "length")}
    try:
        for start in range(0, len(prompts), batch_size):
            prompt_ids, prompt_mask = pad_batch(prompts[start:start + batch_size], tokenizer.pad_token_id, side="left")
            prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)  # (b, P)
            responses, response_mask = generate(lm, prompt_ids, prompt_mask, max_new_tokens, tokenizer.eos_token_id,
                                                tokenizer.pad_token_id, temperature=temperature,
                                                generator=generator, precision=precision)  # (b, R)
            input_ids = torch.cat([prompt_ids, responses], 1)  # (b, P + R)
            attention_mask = torch.cat([prompt_mask, response_mask], 1)
            start_r, mask, chunk = prompt_ids.shape[1], response_mask.float(), chunk_size or batch_size
            with autocast():
                raw_scores = score_responses(reward_model, prompt_ids, prompt_mask, responses, response_mask)  # (b,)
                logprobs = response_logprobs(lm, input_ids, attention_mask, start_r, temperature, chunk)  # (b, R)
                ref_logprobs = response_logprobs(ref_lm, input_ids, attention_mask, start_r, temperature, chunk)
                ref_logprobs_t1 = (ref_logprobs if temperature == 1.0 else
                                   response_logprobs(ref_lm, input_ids, attention_mask, start_r, 1.0, chunk))
            rows["prompt"] += tokenizer.batch_decode(prompt_ids.masked_fill(prompt_mask == 0, tokenizer.eos_token_id)
                                                     .tolist(), skip_special_tokens=True)
            rows["response"] += decode_responses(tokenizer, responses, response_mask)
            rows["raw_score"] += raw_scores.float().tolist()
            rows["ends_with_eos"] += ends_with_eos(responses, response_mask, tokenizer.eos_token_id).tolist()
            rows["kl"] += ((logprobs - ref_logprobs) * mask).sum(1).tolist()
            rows["ref_nll"] += (-ref_logprobs_t1 * mask).sum(1).tolist()
            rows["length"] += response_mask.sum(1).tolist()
    finally:
        lm.train(was_training)
    table = pd.DataFrame(rows)
    table.insert(3, "positive", table["raw_score"] > threshold)
    summary = {
        "raw_score_mean": float(table["raw_score"].mean()),
        "positive_share": float(table["positive"].mean()),
    }
    if judge is not None:
        texts = [prompt + response for prompt, response in zip(table["prompt"], table["response"])]
        table.insert(4, "judge_score", judge.scores(texts))
        table.insert(5, "judge_positive", table["judge_score"] > judge.threshold)
        summary.update(judge_score_mean=float(table["judge_score"].mean()),
                       judge_positive_share=float(table["judge_positive"].mean()))
    summary.update({
        "kl_to_ref": float(table["kl"].mean()),
        "ref_perplexity": math.exp(table["ref_nll"].sum() / max(1, table["length"].sum())),
        "eos_share": float(table["ends_with_eos"].mean()),
        "response_length": float(table["length"].mean()),
        "distinct_2": distinct_n(table["response"], 2),
    })
    return summary, table


def bce_reward_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with the score as the logit: -[y log sigmoid(r) + (1 - y) log sigmoid(-r)], mean."""
    return F.binary_cross_entropy_with_logits(scores, labels.to(scores.dtype))


def pairwise_reward_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry loss [Ouyang22 eq. 1]: mean of -log sigmoid(r_chosen - r_rejected)."""
    return -F.logsigmoid(chosen_scores - rejected_scores).mean()


def roc_auc(scores: torch.Tensor | Sequence[float], labels: torch.Tensor | Sequence[int]) -> float:
    """Area under the ROC curve from ranks (Mann-Whitney U): P(a random positive outscores a random negative).

    Tied scores share the mean of their ranks, so a tie between a positive and a negative counts 1/2.
    """
    scores = torch.as_tensor(scores, dtype=torch.float64).flatten()  # (N,)
    positive = torch.as_tensor(labels).flatten() == 1  # (N,)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"roc_auc needs both labels; got {n_pos} positive and {n_neg} negative scores.")
    _, group, counts = torch.unique(scores, return_inverse=True, return_counts=True)  # groups of equal scores
    # a group of c equal scores whose highest rank is R shares the mean rank R - (c - 1) / 2
    counts = counts.double()
    ranks = (counts.cumsum(0) - (counts - 1) / 2)[group]  # (N,), 1 = lowest score
    # AUC = (sum of positive ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def pairwise_accuracy(scores: torch.Tensor, labels: torch.Tensor | Sequence[int], seed: int = 0) -> float:
    """Share of (positive, negative) pairs from `make_preference_pairs` where the positive scores higher."""
    pairs = make_preference_pairs([int(y) for y in labels], seed=seed)
    chosen, rejected = torch.tensor([c for c, _ in pairs]), torch.tensor([r for _, r in pairs])
    return float((scores[chosen] > scores[rejected]).float().mean())


def reward_metrics(scores: torch.Tensor, labels: torch.Tensor | Sequence[int], threshold: float = 0.0) -> dict[str, float]:
    """accuracy of 'positive if score > threshold', ROC AUC and pairwise accuracy of rewards against 0/1 labels."""
    labels = torch.as_tensor(labels).flatten()  # (N,)
    predicted = (scores > threshold).long()  # (N,)
    return {"accuracy": float((predicted == labels).float().mean()), "auc": roc_auc(scores, labels),
            "pairwise_accuracy": pairwise_accuracy(scores, labels)}


# -----------------------------------------------------------------------------
# Training helpers

def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy: the logits at position t score the label at t + 1; labels of -100 are ignored.

    logits (B, T, V), labels (B, T) as made by `lm_labels`. 'mean' averages over the counted tokens,
    'sum' adds them (to average over many batches, divide the sum by the count of counted tokens).
    """
    # L = -1/N sum_t m_t log p(x_t | x_<t), N = sum_t m_t: drop the last prediction and the first label
    shifted_logits = logits[:, :-1].float()  # (B, T-1, V)
    shifted_labels = labels[:, 1:]  # (B, T-1)
    return F.cross_entropy(shifted_logits.reshape(-1, shifted_logits.shape[-1]), shifted_labels.reshape(-1),
                           ignore_index=-100, reduction=reduction)


@torch.no_grad()
def validation_loss(lm: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                    precision: Precision | None = None) -> float:
    """Mean next-token loss per counted token over right-padded (input_ids, attention_mask) batches, in eval mode.

    Every token weighs the same, however the sentences were batched; perplexity = exp(this loss).
    """
    device = next(lm.parameters()).device
    autocast = precision.autocast() if precision else contextlib.nullcontext()
    was_training = lm.training
    lm.eval()
    try:
        total, count = torch.zeros((), device=device), 0
        for input_ids, attention_mask in batches:
            input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
            labels = lm_labels(input_ids, attention_mask)  # (B, T)
            with autocast:
                logits = lm(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, T, V)
            total += causal_lm_loss(logits, labels, reduction="sum")
            count += int((labels[:, 1:] != -100).sum())
    finally:
        lm.train(was_training)
    return total.item() / max(count, 1)


def warmup_steps(warmup_ratio: float, total_steps: int) -> int:
    """Steps of linear warmup: warmup_ratio of the steps, rounded up (so any ratio > 0 warms up at least one step)."""
    return math.ceil(warmup_ratio * total_steps)


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Learning-rate multiplier per step: linear warmup from 0, then cosine, linear or no decay."""
    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(progress, 1.0)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if schedule == "linear":
            return 1.0 - progress
        return 1.0
    return multiplier


def make_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.0, eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not biases, LayerNorm gains); the fused kernel on CUDA and CPU.

    The fused kernel updates all parameters in one pass instead of a handful of ops per tensor: the
    same AdamW update, several times faster for a small model (PyTorch >= 2.4 has it on CPU).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    cpu_fused = tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 4)
    fused = all(p.is_cuda for p in params) or (cpu_fused and all(p.device.type == "cpu" for p in params))
    return torch.optim.AdamW(groups, lr=lr, eps=eps, fused=fused or None)


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   parameters: Sequence[torch.Tensor] | Iterator[torch.Tensor], max_grad_norm: float) -> torch.Tensor:
    """Backward, unscale (fp16), clip the global gradient norm, step, zero the gradients; returns the norm.

    The norm is inf (or NaN) when fp16 gradients overflowed: the scaler then skipped the step (`grad_norm_metrics`).
    """
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(list(parameters), max_grad_norm)
    scaler.step(optimizer)  # skipped by the scaler when fp16 gradients overflowed
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def grad_norm_metrics(grad_norms: torch.Tensor, scaler: torch.amp.GradScaler, prefix: str,
                      step: int = 0) -> dict[str, float]:
    """Metrics of one or more optimizer steps' gradient norms (as `optimizer_step` returns them).

    With fp16 loss scaling, a step whose gradients overflowed reports an infinite norm and was skipped: it
    is counted in {prefix}/skipped_steps and left out of the mean {prefix}/grad_norm, so the history holds no
    inf. Without a scaler nothing skips an infinite gradient, so it stops training (TrainingDivergedError).
    """
    norms = grad_norms.detach().float().flatten()  # one per optimizer step
    taken = torch.isfinite(norms)
    skipped = int((~taken).sum())
    if skipped and not scaler.is_enabled():
        check_finite(prefix, step, grad_norm=float(norms[~taken][0]))
    metrics = {f"{prefix}/skipped_steps": float(skipped)}
    if skipped < len(norms):
        metrics[f"{prefix}/grad_norm"] = float(norms[taken].mean())
    return metrics


def check_finite(what: str, step: int, **values: float) -> None:
    """Raise TrainingDivergedError naming the quantity and the step when a value is NaN or infinite."""
    for name, value in values.items():
        if not math.isfinite(value):
            raise TrainingDivergedError(
                f"{what}: {name} became {value} at iteration/step {step}. Training stopped; the last good "
                "checkpoint is untouched. Lower the learning rate, or try precision='fp32'.")


def data_fingerprint(rows: Sequence[Sequence[int]]) -> str:
    """A short hash of token-id rows (e.g. the validation set): equal fingerprints mean the same data."""
    return hashlib.sha256(json.dumps([list(map(int, r)) for r in rows]).encode()).hexdigest()[:16]


def run_problems(values: Sequence[float], higher_is_better: bool, margin: float,
                 saved: float | None = None) -> list[str]:
    """What is wrong with a run whose validation metric went `values` (first = before training), if anything.

    Three signs of a run that diverged without ever reaching NaN: it ended more than `margin` worse than it
    started, than its own best point, or than `saved` (the value of the model already saved, measured on the
    same data).
    """
    sign = 1.0 if higher_is_better else -1.0
    first, last = values[0], values[-1]
    best_i = max(range(len(values)), key=lambda i: sign * values[i])
    problems = []
    if sign * (first - last) > margin:
        problems.append(f"it ended worse than it started ({first:.4g} before training, {last:.4g} at the end)")
    if sign * (values[best_i] - last) > margin:
        problems.append(f"it ended at {last:.4g}, far from its best point ({values[best_i]:.4g}, "
                        f"validation {best_i} of {len(values) - 1})")
    if saved is not None and sign * (saved - last) > margin:
        problems.append(f"the model already saved there scored {saved:.4g} on the same validation data, this one {last:.4g}")
    return problems


def save_unless_worse(save: Callable[[str], Any], folder: str, metric: str, values: Sequence[float],
                      higher_is_better: bool, margin: float, data: str, save_worse: bool = False) -> str:
    """Save a trained model with `save(folder)`, unless the run looks diverged (`run_problems`): then save it
    beside, to folder + '.rejected', keep the model already in `folder`, and raise an RLHFError saying why.

    `data` fingerprints the validation data; a saved model's value counts only when it was measured on the same.
    The model's meta should record {"validation": {"metric": metric, "value": values[-1], "data": data}}.
    """
    saved = None
    if Path(folder).is_dir():
        try:
            record = verify_checkpoint(folder, deep=False).get("validation", {})
        except CheckpointError:
            record = {}
        if record.get("metric") == metric and record.get("data") == data:
            saved = float(record["value"])
    problems = [] if save_worse else run_problems(values, higher_is_better, margin, saved)
    if not problems:
        save(folder)
        return folder
    rejected = folder + ".rejected"
    save(rejected)
    raise RLHFError(f"This run's {metric} looks like a failed run: " + "; ".join(problems) + ". It was saved to "
                    f"{rejected}, not to {folder}" + (" (which keeps the better model)" if saved is not None else "") +
                    ". A metric that gets worse during training usually means a learning rate that is too high. "
                    "To use this model anyway, set save_worse_model=True (RLHF_SAVE_WORSE_MODEL=1) and run again.")


def device_clock(device: torch.device) -> float:
    """time.perf_counter() once the device's queued work is done (CUDA runs asynchronously), for timers."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class History:
    """Namespaced scalars over steps (e.g. 'env/score_mean'), one row per logged step."""

    def __init__(self, rows: list[dict[str, float]] | None = None):
        self.rows: list[dict[str, float]] = rows or []

    def log(self, step: int, **scalars: float) -> None:
        """Record scalars for a step; keys are 'namespace/name' (pass as log(step, **{'a/b': 1.0}))."""
        self.rows.append({"step": step, **{k: float(v) for k, v in scalars.items()}})

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(steps, values) of one key, skipping rows that lack it."""
        pairs = [(r["step"], r[key]) for r in self.rows if key in r]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def last(self, key: str) -> float:
        """The latest value of a key."""
        return self.series(key)[1][-1]

    def to_frame(self) -> "pd.DataFrame":
        """All rows as a DataFrame indexed by step."""
        import pandas as pd
        return pd.DataFrame(self.rows).set_index("step")


class _BoundedProgress(tqdm):
    """tqdm whose set_postfix waits for the next scheduled refresh instead of forcing one."""

    def set_postfix(self, ordered_dict: Mapping[str, Any] | None = None, refresh: bool = False, **kwargs: Any) -> None:
        super().set_postfix(ordered_dict, refresh=refresh, **kwargs)


def progress(iterable: Any = None, max_refreshes: int = 200, **kwargs: Any) -> tqdm:
    """A tqdm bar that renders in Jupyter, Colab and a terminal alike, and redraws at most `max_refreshes` times.

    In a notebook every redraw is a message from the kernel to the front end. A bar redrawn at every step of a
    long loop sends thousands while the cell runs, and a client that reads them only after the cell has
    finished (nbval does) finds its queue overflowed: the kernel's "idle" message is dropped and the cell
    "times out waiting for output". So the bar redraws every `total / max_refreshes` steps, at most twice a
    second, and a postfix (loss=...) waits for the next redraw.
    """
    total = kwargs.get("total", len(iterable) if hasattr(iterable, "__len__") else None)
    miniters = max(1, math.ceil((total - kwargs.get("initial", 0)) / max_refreshes)) if total else None
    return _BoundedProgress(iterable, dynamic_ncols=True, mininterval=0.5 if total else 2.0, miniters=miniters, **kwargs)


def sample_table(tokenizer: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, responses: torch.Tensor,
                 response_mask: torch.Tensor, rows: int = 4, **columns: torch.Tensor | Sequence[Any]) -> "pd.DataFrame":
    """The first `rows` episodes of a batch as text (prompt, response), with any per-episode columns given."""
    import pandas as pd
    prompts = tokenizer.batch_decode(prompt_ids[:rows].masked_fill(prompt_mask[:rows] == 0, tokenizer.eos_token_id).tolist(),
                                     skip_special_tokens=True)
    table = {"prompt": prompts, "response": decode_responses(tokenizer, responses[:rows], response_mask[:rows])}
    for name, values in columns.items():
        values = values[:rows].tolist() if isinstance(values, torch.Tensor) else list(values[:rows])
        table[name] = [round(v, 3) if isinstance(v, float) else v for v in values]
    return pd.DataFrame(table)


def ppo_metrics(raw_scores: torch.Tensor, positive: torch.Tensor, scores: torch.Tensor, has_eos: torch.Tensor,
                response_mask: torch.Tensor, kl: torch.Tensor, kl_coef: float, entropy: torch.Tensor,
                values: torch.Tensor, returns: torch.Tensor, mb_stats: Sequence[Mapping[str, torch.Tensor]],
                mb_grad_norms: Sequence[torch.Tensor], scaler: torch.amp.GradScaler, iteration: int) -> dict[str, float]:
    """The namespaced metrics of one PPO iteration (notebook 3, section 5, explains each), read back at once.

    Per episode (B,): raw_scores, positive, scores, has_eos; per token (B, R): the rest. mb_stats holds one
    dict of scalar tensors per minibatch step (averaged here), mb_grad_norms their gradient norms.
    """
    kl_per_sequence = kl.sum(1)  # (B,)
    on_device = {
        "env/score_mean": scores.mean(), "env/score_std": scores.std(),
        "env/raw_score_mean": raw_scores.mean(), "env/positive_share": positive.float().mean(),
        "env/eos_share": has_eos.float().mean(), "env/response_length": response_mask.sum(1).float().mean(),
        "objective/kl": kl_per_sequence.mean(),
        "objective/rlhf_reward": (scores - kl_coef * kl_per_sequence).mean(),  # = the sum of r_t over a response
        "policy/entropy": masked_mean(entropy, response_mask),
        "value/explained_variance": explained_variance(values, returns, response_mask),
        **{name: torch.stack([step[name] for step in mb_stats]).mean() for name in mb_stats[0]},
    }
    metrics = dict(zip(on_device, torch.stack([v.float() for v in on_device.values()]).tolist()))  # one copy
    metrics.update(grad_norm_metrics(torch.stack(list(mb_grad_norms)), scaler, "policy", iteration))
    metrics["objective/kl_coef"] = float(kl_coef)
    return metrics


# Rules of thumb for reading a PPO run, with the numbers notebook 3 (section 5) explains. They come from PPO
# practice (the logs of OpenAI's baselines, [Huang24]'s runs, CleanRL's defaults), not from a theorem: a value
# outside them is a reason to look, not a verdict. (metric, summary, low, high, what outside the range usually means)
PPO_RULES_OF_THUMB: list[tuple[str, str, float, float, str]] = [
    ("policy/clipfrac", "mean", 0.0, 0.3, "above 0.3: the updates are large; most of the batch hits the clip "
     "(lower learning_rate or ppo_epochs)"),
    ("policy/approx_kl", "mean", 0.0, 0.05, "above 0.05 nats per token: each epoch moves the policy far from the one "
     "that sampled, so the clipped objective no longer describes the update (lower learning_rate)"),
    ("value/explained_variance", "last quarter", 0.2, 1.0, "below 0.2: the value head predicts the returns little "
     "better than a constant, and the advantages are mostly noise (raise vf_coef, or train longer); below 0: worse"),
    ("policy/entropy", "last / first", 0.3, 1.5, "below 0.3 of its start: the policy collapsed onto a few "
     "continuations (raise the KL coefficient); above 1.5: it became more random than the SFT model"),
    ("objective/kl", "last / target", 0.5, 2.0, "far below the target: beta holds the policy back; far above: the "
     "policy drifts faster than beta reacts (a smaller kl_horizon reacts sooner)"),
]


def ppo_health_table(history: History, cfg: "PPOConfig") -> "pd.DataFrame":
    """The run's own values beside the rules of thumb (PPO_RULES_OF_THUMB): the healthy range, and what it means
    where a value falls outside. The KL row applies to the adaptive controller only (a fixed beta has no target)."""
    import pandas as pd
    rows = []
    for metric, summary, low, high, meaning in PPO_RULES_OF_THUMB:
        steps, values = history.series(metric)
        if not values or (metric == "objective/kl" and not cfg.adaptive_kl):
            continue
        quarter = values[-max(1, len(values) // 4):]
        value = {"mean": float(np.mean(values)), "last quarter": float(np.mean(quarter)),
                 "last / first": float(np.mean(quarter)) / max(abs(values[0]), 1e-8),
                 "last / target": float(np.mean(quarter)) / cfg.kl_target}[summary]
        rows.append({"metric": metric, "this run": f"{value:.3g} ({summary})", "healthy": f"{low:g} to {high:g}",
                     "reading": "within the range" if low <= value <= high else meaning})
    return pd.DataFrame(rows).set_index("metric")


def curve_metrics(lm: nn.Module, ref_lm: nn.Module, reward_model: ScalarHeadModel, tokenizer: Any,
                  prompts: Sequence[Sequence[int]], cfg: "PPOConfig", precision: Precision | None,
                  threshold: float, judge: SentimentJudge) -> dict[str, float]:
    """One point of the over-optimisation curve: `evaluate_policy` on held-out prompts, as curve/ metrics.

    It samples with its own seeded generator, so it never changes what training draws: a run with the
    curve and one without it train identically.
    """
    summary, _ = evaluate_policy(lm, ref_lm, reward_model, tokenizer, prompts, cfg.response_length, cfg.temperature,
                                 seed=cfg.seed, batch_size=cfg.batch_size, precision=precision, threshold=threshold,
                                 judge=judge, chunk_size=cfg.minibatch_size)
    return {f"curve/{name}": summary[name] for name in
            ("positive_share", "judge_positive_share", "kl_to_ref", "distinct_2", "eos_share", "raw_score_mean")}


def show_source(obj: Any) -> None:
    """Display the source code of a function or class (used where a notebook teaches it)."""
    source = inspect.getsource(obj)
    try:
        from IPython.display import Markdown, display
        display(Markdown(f"```python\n{source}```"))
    except ImportError:
        print(source)


# -----------------------------------------------------------------------------
# Plots

def plot_history(history: History, keys: Sequence[str], title: str = "", ncols: int = 3,
                 smooth: int = 1) -> "plt.Figure":
    """One small plot per key, against steps; `smooth` > 1 adds a moving average."""
    import matplotlib.pyplot as plt
    keys = [k for k in keys if history.series(k)[0]]
    nrows = max(1, math.ceil(len(keys) / ncols))
    fig, axes = plt.subplots(nrows, min(ncols, max(1, len(keys))), figsize=(4.2 * min(ncols, max(1, len(keys))), 3.0 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        steps, values = history.series(key)
        ax.plot(steps, values, lw=1, alpha=0.5 if smooth > 1 else 1.0)
        if smooth > 1 and len(values) >= smooth:
            kernel = np.ones(smooth) / smooth
            ax.plot(steps[smooth - 1:], np.convolve(values, kernel, mode="valid"), lw=2)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_figure(fig: "plt.Figure", figures_dir: str, name: str) -> Path | None:
    """Save `fig` as {figures_dir}/{name}.png when figures_dir is set (the cpu profile sets it); else do nothing.

    A figure that cannot be written is reported and skipped: it must never stop a notebook before its save cell.
    """
    if not figures_dir:
        return None
    path = Path(figures_dir) / f"{name}.png"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
    except OSError as error:
        print(f"Could not save the figure {path} ({error.strerror or error}); it is shown but not saved, and "
              "nothing else is affected. Set RLHF_FIGURES_DIR to a writable folder (or '' to save none).")
        return None
    return path


# -----------------------------------------------------------------------------
# Checkpoints. A checkpoint is a folder with a manifest (checkpoint.json) listing every file's size
# and SHA-256. It is written under a temporary name and renamed into place, so the folder at the
# final path is either the old complete checkpoint or the new complete one, never half of one.

MANIFEST = "checkpoint.json"
STALE_ELSEWHERE_S = 3600  # another runtime's temporary folder untouched this long belongs to a runtime that is gone


def _sha256(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def host_id() -> str:
    """This machine's name, as temporary folders carry it: runtimes that share a Drive folder tell theirs apart."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def check_writable(folder: str | Path, setting: str = "output_dir") -> Path:
    """Create `folder` and write a test file there, so a read-only folder fails now, not after training.

    `setting` is the config field that chose the folder; the message names it (and its RLHF_ variable).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{host_id()}-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise CheckpointError(f"Cannot write to {folder} ({error.strerror or error}). Choose a writable folder "
                              f"with {ENV_PREFIX}{setting.upper()} (or {setting}= in the Configuration cell)."
                              + drive_error_hint(error)) from error
    return folder


def check_output_folders(cfg: BaseConfig) -> None:
    """Check, before any training, that every folder this notebook will write into can be written.

    Model and checkpoint folders are written under a temporary name beside them, so their parent is checked.
    """
    check_writable(cfg.output_dir, "output_dir")
    if cfg.figures_dir:
        check_writable(cfg.figures_dir, "figures_dir")
    for setting in ("checkpoint_dir", "policy_dir"):
        if hasattr(cfg, setting):
            check_writable(Path(getattr(cfg, setting)).parent, setting)


def _pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (the writer of a temporary folder)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_complete(folder: Path) -> bool:
    """Whether `folder` holds a manifest and every file it lists, unchanged."""
    if not (folder / MANIFEST).exists():
        return False
    try:
        verify_checkpoint(folder, recover=False)
    except CheckpointError:
        return False
    return True


def _writer_gone(temporary: Path, final_name: str) -> bool:
    """Whether the save that owns temporary folder `<final>.tmp-HOST-PID` (or `.tmp-PID`) can no longer finish.

    On this machine: its process has ended. From another machine (another Colab runtime on the same Drive folder):
    nothing in it changed for STALE_ELSEWHERE_S, since that runtime's process cannot be seen from here.
    """
    owner = temporary.name[len(final_name) + len(".tmp-"):]
    host, _, pid = owner.rpartition("-")
    if not pid.isdigit():
        return True
    if host in ("", host_id()):
        return int(pid) == os.getpid() or not _pid_alive(int(pid))
    try:
        changed = max([p.stat().st_mtime for p in temporary.rglob("*")] + [temporary.stat().st_mtime])
    except OSError:
        return False
    return time.time() - changed > STALE_ELSEWHERE_S


def recover_checkpoint(final_dir: str | Path) -> Path:
    """Finish or undo a save of `final_dir` that was cut off part-way; returns final_dir.

    `atomic_directory` writes into a temporary folder (*.tmp-HOST-PID), renames the current version to *.old,
    then the temporary folder into place. *.old stays as the spare that the next save overwrites in place, so a
    save deletes nothing (on Google Drive, deleted files fill the Trash, which counts against the quota). A cut
    between the two renames leaves no folder at the final path: the newest complete version, new or old, is moved
    into place. A temporary folder whose writer is gone becomes the spare (or is removed if there is one); one that
    another runtime may still be writing is left alone.
    """
    final_dir = Path(final_dir)
    old = Path(str(final_dir) + ".old")
    parent = final_dir.parent
    temporaries = [p for p in parent.glob(final_dir.name + ".tmp-*") if p.is_dir()] if parent.is_dir() else []
    stale = [p for p in temporaries if _writer_gone(p, final_dir.name)]
    if not final_dir.exists():
        complete = sorted((p for p in stale + ([old] if old.is_dir() else []) if _is_complete(p)),
                          key=lambda p: json.loads((p / MANIFEST).read_text()).get("written", ""))
        if complete:
            complete[-1].rename(final_dir)
            if complete[-1] in stale:
                stale.remove(complete[-1])
                print(f"{final_dir}: an interrupted save had finished writing; its new version is now in place.")
            else:
                print(f"{final_dir}: an interrupted save had not finished; the previous version is back in place.")
    for leftover in stale:
        if not old.exists():
            leftover.rename(old)  # the next save overwrites it in place
        else:
            shutil.rmtree(leftover, ignore_errors=True)
    return final_dir


def _reuse_as_temporary(final_dir: Path, tmp: Path) -> set[Path]:
    """Make `tmp` the folder to write into: the spare (*.old) emptied in place when there is one, else a new folder.

    Files are truncated, not deleted, so the writers below overwrite them in place (on Drive: the same files, nothing
    to the Trash). Returns the files found there; those still empty after the save were not written again.
    """
    old = Path(str(final_dir) + ".old")
    if not tmp.exists() and old.is_dir():
        old.rename(tmp)
    tmp.mkdir(exist_ok=True)
    found = {p for p in tmp.rglob("*") if p.is_file()}
    for path in found:
        os.truncate(path, 0)
    return found


def _set_aside(folder: Path) -> None:
    """Remove `folder`; if that fails (a Drive hiccup, files of another runtime), rename it out of the way instead."""
    try:
        shutil.rmtree(folder)
    except OSError:
        if folder.exists():
            folder.rename(folder.with_name(f"{folder.name}-set-aside-{host_id()}-{time.time_ns()}"))


@contextlib.contextmanager
def atomic_directory(final_dir: str | Path, meta: Mapping[str, Any] | None = None) -> Iterator[Path]:
    """Yield a temporary folder to write into; on success add the manifest and move it to `final_dir`.

    The previous version becomes the spare (*.old): the next save overwrites its files in place, so saving deletes
    nothing. If the block raises, `final_dir` is left as it was. If the process is killed at any instant,
    `recover_checkpoint` (run by every loader and by the next save) finds a complete version, old or new.
    """
    final_dir = Path(final_dir)
    tmp = Path(str(final_dir) + f".tmp-{host_id()}-{os.getpid()}")
    try:
        final_dir.parent.mkdir(parents=True, exist_ok=True)
        recover_checkpoint(final_dir)
        reused = _reuse_as_temporary(final_dir, tmp)
    except OSError as error:
        raise CheckpointError(f"Cannot write {final_dir} ({error.strerror or error}). Choose a writable folder "
                              "for it: RLHF_OUTPUT_DIR, or the RLHF_..._DIR setting that names this folder."
                              + drive_error_hint(error)) from error
    try:
        yield tmp
        for path in reused:
            if path.exists() and path.stat().st_size == 0 and path.name != MANIFEST:
                path.unlink()  # a file of the spare that this save did not write again (empty: nothing to the Trash)
        files = {}
        for p in sorted(tmp.rglob("*")):
            if p.is_file() and p.relative_to(tmp).as_posix() != MANIFEST:
                with open(p, "rb+") as f:  # on disk before the manifest says the folder is complete
                    os.fsync(f.fileno())
                files[p.relative_to(tmp).as_posix()] = {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        manifest = {"format": 1, "written": time.strftime("%Y-%m-%d %H:%M:%S") + f".{time.time_ns() % 10**9:09d}",
                    "meta": dict(meta or {}), "files": files}
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        old = Path(str(final_dir) + ".old")
        if final_dir.exists():
            if old.exists():  # a spare another runtime left meanwhile: removing it must never fail this save
                _set_aside(old)
            final_dir.rename(old)  # the previous version stays complete until the new one is in place
        tmp.rename(final_dir)
    except BaseException as error:
        old = Path(str(final_dir) + ".old")
        if tmp.exists():
            if final_dir.exists() and not old.exists():
                tmp.rename(old)  # kept as the spare, as the save found it (emptied)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, OSError) and not isinstance(error, RLHFError):
            raise CheckpointError(f"Writing {final_dir} failed ({error.strerror or error}); the previous version, if "
                                  "any, is kept." + drive_error_hint(error)) from error
        raise


def verify_checkpoint(folder: str | Path, deep: bool = True, recover: bool = True) -> dict[str, Any]:
    """Check a checkpoint folder against its manifest; returns the manifest's meta or raises CheckpointError.

    First completes an interrupted save (`recover_checkpoint`) unless recover=False. Folders without a
    manifest (e.g. one saved by `save_pretrained` elsewhere) are accepted as they are.
    """
    folder = Path(folder)
    if recover:
        recover_checkpoint(folder)
    if not folder.is_dir():
        raise CheckpointError(f"No checkpoint at {folder}.")
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        if any(folder.parent.glob(folder.name + ".tmp-*")):
            raise CheckpointError(f"{folder} has no manifest and an interrupted save lies beside it: it may be "
                                  "half-written. Run the notebook that writes it again.")
        return {}
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{manifest_path} cannot be read ({error}); the checkpoint is damaged. "
                              "Run the notebook that writes it again." + drive_error_hint(error)) from error
    for name, expected in manifest["files"].items():
        path = folder / name
        size = path.stat().st_size if path.exists() else None
        if size is None or size < expected["bytes"]:
            state = "missing" if size is None else f"shorter than its manifest says ({size:,} of {expected['bytes']:,} bytes)"
            raise CheckpointError(
                f"{path} is {state}. "
                "If another Colab runtime saved this folder to Google Drive in the last minutes, its upload may "
                "still be under way: wait a few minutes, then run this cell again (the previous complete version, "
                "if any, is kept). Otherwise the save was cut off: run the notebook that writes it again.")
        if size != expected["bytes"] or (deep and _sha256(path) != expected["sha256"]):
            raise CheckpointError(f"{path} does not match its manifest: the checkpoint is corrupt or was changed "
                                  "after saving. Run the notebook that writes it again.")
    return manifest.get("meta", {})


def save_causal_lm(lm: nn.Module, tokenizer: Any, folder: str | Path, meta: Mapping[str, Any] | None = None) -> Path:
    """Save a causal LM and its tokenizer as safetensors, atomically."""
    meta = {"kind": "causal_lm", "vocabulary": vocabulary_fingerprint(tokenizer), **(meta or {})}
    with atomic_directory(folder, meta) as tmp:
        lm.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(folder)


REWARD_MODEL_LAYOUT = 2  # 2: reward_config.json holds the decision threshold
REWARD_CONFIG = "reward_config.json"


def save_reward_model(model: ScalarHeadModel, tokenizer: Any, folder: str | Path, score_mean: float,
                      score_std: float, threshold: float, meta: Mapping[str, Any] | None = None) -> Path:
    """Save the reward model atomically: trunk + head weights (safetensors), its config, the tokenizer, and in
    reward_config.json the normalisation (mean, std) and the threshold above which a raw score means "positive"."""
    from safetensors.torch import save_file
    info = {"layout": REWARD_MODEL_LAYOUT, "head": "linear(hidden_size -> 1) on the last real token",
            "score_mean": float(score_mean), "score_std": float(score_std), "threshold": float(threshold),
            "vocabulary": vocabulary_fingerprint(tokenizer), **(meta or {})}
    with atomic_directory(folder, {"kind": "reward_model", **info}) as tmp:
        model.trunk.config.save_pretrained(tmp)
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / REWARD_CONFIG).write_text(json.dumps(info, indent=1))
        tokenizer.save_pretrained(tmp)
    return Path(folder)


def load_reward_model(folder: str | Path, device: torch.device | str = "cpu") -> tuple[ScalarHeadModel, Any, dict[str, Any]]:
    """Load a reward model saved by `save_reward_model`: (model in eval mode, tokenizer, info: normalisation, threshold)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel
    folder = recover_checkpoint(folder)
    if not folder.is_dir():
        raise CheckpointError(f"No reward model at {folder}. Run 2-RM Training.ipynb first (it saves there), "
                              "or set RLHF_REWARD_MODEL_DIR to the folder that holds one.")
    verify_checkpoint(folder)
    info_path = folder / REWARD_CONFIG
    if not info_path.exists():
        raise CheckpointError(f"{folder} has no {REWARD_CONFIG}: it is not a reward model saved by this series "
                              "(or is from an older layout). Re-run 2-RM Training.ipynb to save it again.")
    info = json.loads(info_path.read_text())
    if info.get("layout") != REWARD_MODEL_LAYOUT:
        raise CheckpointError(f"{folder} uses reward-model layout {info.get('layout')}, this code reads layout "
                              f"{REWARD_MODEL_LAYOUT}. Re-run 2-RM Training.ipynb to save it in the current layout.")
    trunk = AutoModel.from_config(AutoConfig.from_pretrained(folder))
    model = ScalarHeadModel(use_fused_gelu(trunk))
    state = load_file(str(folder / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{folder}/model.safetensors does not fit the model: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}. Re-run 2-RM Training.ipynb.")
    tokenizer = load_tokenizer(str(folder), padding_side="right")
    return model.to(device).eval(), tokenizer, info


def check_same_vocabulary(policy_tokenizer: Any, reward_tokenizer: Any) -> None:
    """Refuse a reward model whose token ids mean other tokens than the policy's."""
    a, b = vocabulary_fingerprint(policy_tokenizer), vocabulary_fingerprint(reward_tokenizer)
    if a != b:
        raise CheckpointError(
            f"The reward model's vocabulary ({b}, {len(reward_tokenizer)} tokens) differs from the policy's "
            f"({a}, {len(policy_tokenizer)} tokens): it would read the policy's token ids as other words. "
            "Train both notebooks with the same model family and profile.")


# Where each input of 3-RLHF.ipynb comes from: its setting -> (what, the notebook that writes it, an example hub id)
PPO_INPUTS = {"sft_model_dir": ("SFT model", "1-SFT.ipynb", "your-name/gpt2-sst2-sft"),
              "reward_model_dir": ("reward model", "2-RM Training.ipynb", "your-name/gpt2-sst2-reward")}


def fetch_from_hub(repo_id: str, setting: str) -> Path:
    """Download (or find in the local cache) the input `setting` of PPO_INPUTS that `push_folder_to_hub` uploaded.

    The whole folder comes back, manifest included, so the loaders verify it as they verify a local one.
    Errors name the setting that asked for it and the local way instead. Returns the folder.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
    what, notebook, _ = PPO_INPUTS[setting]
    instead = (f"Or set {ENV_PREFIX}{setting.upper()} to a local folder that holds one (run {notebook} first; in "
               "Colab, with the outputs on the same Drive folder).")
    try:
        return Path(snapshot_download(repo_id))
    except RepositoryNotFoundError as error:
        raise CheckpointError(f"There is no {what} {repo_id!r} on the Hugging Face hub (or it is private: give a "
                              f"token that may read it, as HF_TOKEN or Colab's secret). {instead}") from error
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        raise HubUnavailableError(f"Could not fetch the {what} {repo_id!r} from the Hugging Face hub "
                                  f"({type(error).__name__}): no connection, and no copy in the local cache. Check "
                                  f"the internet connection (in Colab: Runtime > Restart). {instead}") from error


def check_ppo_inputs(cfg: PPOConfig) -> tuple[Path, Path]:
    """The local folders of the SFT and reward models that 3-RLHF.ipynb starts from: (sft, reward).

    Each setting is a local folder, or a hub repo id ("name/repo", what push_to_hub wrote in notebooks 1
    and 2), fetched into the local cache. A folder under output_dir is always local. One CheckpointError
    names every input that is missing, and both ways to provide it.
    """
    found, missing = [], []
    for setting, (what, notebook, example) in PPO_INPUTS.items():
        value = getattr(cfg, setting)
        path = recover_checkpoint(value)  # a save killed part-way left it under another name
        local = path.is_dir() or looks_like_local_path(value) or value.startswith(cfg.output_dir.rstrip("/") + "/")
        if path.is_dir():
            found.append(path)
        elif not local and HUB_REPO_ID.fullmatch(value):
            found.append(fetch_from_hub(value, setting))
        else:
            missing.append(f"No {what} at {value}: run {notebook} first (same profile; in Colab, with the same Drive "
                           f"folder), or set {ENV_PREFIX}{setting.upper()} to a folder that holds one, or to the hub "
                           f"repo {notebook} pushed it to with push_to_hub=True (e.g. {example}).")
    if missing:
        raise CheckpointError("\n".join(missing))
    return found[0], found[1]


# PPO checkpoints: policy + value head (safetensors), optimizer, loss scaler, KL coefficient, random
# number generators and the metric history, so an interrupted run continues exactly where it stopped.

PPO_CHECKPOINT_KIND = "ppo_checkpoint"
PPO_TRAINING_STATE = "training_state.pt"
# PPOConfig fields that do not change what training computes: a run may resume under other values.
PPO_BOOKKEEPING_FIELDS = {"profile", "output_dir", "model_name", "device", "precision", "require_cuda",
                          "push_to_hub", "hub_repo_id", "sft_model_dir", "reward_model_dir", "policy_dir",
                          "checkpoint_dir", "num_iterations", "eval_prompts", "samples_every",
                          "checkpoint_every", "checkpoint_minutes", "resume", "figures_dir", "eval_every",
                          "curve_prompts"}


def folder_fingerprint(folder: str | Path) -> str:
    """A short hash of a saved folder's contents (its manifest's file hashes); the path itself without one."""
    manifest = Path(folder) / MANIFEST
    if not manifest.exists():
        return str(folder)
    files = json.loads(manifest.read_text())["files"]
    listing = json.dumps({name: entry["sha256"] for name, entry in files.items()}, sort_keys=True)
    return hashlib.sha256(listing.encode()).hexdigest()[:16]


def ppo_run_signature(cfg: PPOConfig, sft_model_path: str | Path, reward_model_path: str | Path) -> dict[str, Any]:
    """What makes a checkpoint resumable by this run: the settings that change training, and the contents of the
    input models (their local folders, as `check_ppo_inputs` returns them)."""
    def portable(value: Any) -> Any:  # a path inside output_dir is the same setting wherever output_dir is mounted
        prefix = cfg.output_dir.rstrip("/") + "/"
        return "{output_dir}/" + value[len(prefix):] if isinstance(value, str) and value.startswith(prefix) else value
    settings = {f.name: portable(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.name not in PPO_BOOKKEEPING_FIELDS}
    return {"settings": settings, "sft_model": folder_fingerprint(sft_model_path),
            "reward_model": folder_fingerprint(reward_model_path)}


def _rng_states(generator: torch.Generator | None) -> dict[str, Any]:
    """Every random number generator's state, in types torch.load(weights_only=True) reads back."""
    np_state = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "generator": generator.get_state() if generator is not None else None}


def _set_rng_states(states: Mapping[str, Any], generator: torch.Generator | None) -> None:
    """Restore the states saved by `_rng_states`."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if generator is not None and states["generator"] is not None:
        generator.set_state(states["generator"])


def save_ppo_checkpoint(folder: str | Path, policy: PolicyWithValueHead, optimizer: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler, kl_controller: AdaptiveKLController, iteration: int,
                        history: History, generator: torch.Generator | None = None,
                        signature: Mapping[str, Any] | None = None) -> Path:
    """Write everything needed to continue PPO after `iteration` completed iterations, atomically.

    At iteration 0 the weights are the SFT model's (and a zero value head), which the notebook has just loaded, so
    they are not written again: that checkpoint holds the random states and settings alone (kilobytes, not 1.5 GB).
    """
    from safetensors.torch import save_model
    meta = {"kind": PPO_CHECKPOINT_KIND, "iteration": int(iteration), "signature": dict(signature or {}),
            "weights": iteration > 0}
    with atomic_directory(folder, meta) as tmp:
        if iteration > 0:
            save_model(policy, str(tmp / "policy.safetensors"))  # tied GPT-2 embeddings are stored once
        torch.save({"iteration": int(iteration), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                    "kl_controller": kl_controller.state_dict(), "rng": _rng_states(generator)},
                   tmp / PPO_TRAINING_STATE)
        (tmp / "history.json").write_text(json.dumps(history.rows))
    return Path(folder)


def checkpoint_due(iteration: int, cfg: "PPOConfig", seconds_since_last: float) -> bool:
    """Whether the PPO loop writes a checkpoint after `iteration`: every checkpoint_every iterations, after
    checkpoint_minutes since the last one, and at the end."""
    return (iteration == cfg.num_iterations or (cfg.checkpoint_every > 0 and iteration % cfg.checkpoint_every == 0)
            or (cfg.checkpoint_minutes > 0 and seconds_since_last >= 60 * cfg.checkpoint_minutes))


def ppo_checkpoint_bytes(policy_weight_bytes: int) -> int:
    """Size of a PPO checkpoint from the size of the policy's weights (fp32): the weights and AdamW's two moments."""
    return 3 * policy_weight_bytes


def ppo_write_plan(cfg: "PPOConfig", minutes: Sequence[float] = (20, 30, 40)) -> str:
    """What this run will write under its output folder (on Google Drive in Colab), from the SFT model's size."""
    manifest = Path(cfg.sft_model_dir) / MANIFEST
    if not manifest.exists():
        return f"(What PPO writes is known once the SFT model is in {cfg.sft_model_dir}.)"
    files = json.loads(manifest.read_text())["files"]
    weights = sum(entry["bytes"] for name, entry in files.items() if name.endswith(".safetensors"))
    policy = sum(entry["bytes"] for entry in files.values())
    checkpoint = ppo_checkpoint_bytes(weights)
    gb = lambda n: f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"  # noqa: E731
    where = " (on Google Drive)" if in_colab() and Path(cfg.output_dir).resolve().is_relative_to(
        _drive_mount_point().resolve()) else ""
    when = [f"every {cfg.checkpoint_every} iterations"] if cfg.checkpoint_every else []
    when += [f"every {cfg.checkpoint_minutes:g} minutes of PPO"] if cfg.checkpoint_minutes else []
    lines = [f"PPO writes to {cfg.output_dir}{where}: a checkpoint of about {gb(checkpoint)} {' and '.join(when)} "
             f"and at the end, then the policy, {gb(policy)}. The checkpoint folder and its spare (.old) are "
             "overwritten in place: nothing goes to Drive's Trash."]
    if cfg.checkpoint_minutes and not cfg.checkpoint_every:
        lines += [f"  a run of {m:g} minutes: {math.ceil(m / cfg.checkpoint_minutes)} checkpoints, "
                  f"{gb(math.ceil(m / cfg.checkpoint_minutes) * checkpoint + policy)}" for m in minutes]
    return "\n".join(lines)


def can_resume(folder: str | Path, signature: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether PPO can continue from the checkpoint in `folder`, and a sentence that says why (or why not).

    A damaged checkpoint is refused (CheckpointError); one written by a different run (other settings,
    other SFT or reward model) is not resumed, since continuing it would mix two experiments.
    """
    folder = recover_checkpoint(folder)
    if not folder.is_dir():
        return False, f"No checkpoint in {folder}: training starts from the SFT model."
    meta = verify_checkpoint(folder, deep=False)
    if meta.get("kind") != PPO_CHECKPOINT_KIND:
        raise CheckpointError(f"{folder} is not a PPO checkpoint of this series (kind {meta.get('kind')!r}). "
                              "Set RLHF_CHECKPOINT_DIR to another folder, or delete this one.")
    saved = meta.get("signature", {})
    if saved != dict(signature):
        changes = [f"{k}: {saved.get('settings', {}).get(k)!r} -> {v!r}" for k, v in signature.get("settings", {}).items()
                   if saved.get("settings", {}).get(k) != v]
        changes += [f"the {k.replace('_', ' ')} changed" for k in ("sft_model", "reward_model") if saved.get(k) != signature.get(k)]
        return False, (f"The checkpoint in {folder} comes from a different run ({'; '.join(changes) or 'other settings'}): "
                       "training starts from the SFT model and will replace it.")
    return True, f"Resuming from the checkpoint in {folder}: {meta['iteration']} iterations done."


def resume_or_start(cfg: "PPOConfig", signature: Mapping[str, Any], policy: PolicyWithValueHead,
                    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, kl_controller: AdaptiveKLController,
                    generator: torch.Generator) -> tuple[int, History]:
    """Continue from cfg.checkpoint_dir when it holds this run's checkpoint (and cfg.resume), else start over.

    Prints which, and why. Starting over writes iteration 0 as a checkpoint first, so that an interrupted
    run always restarts from a saved state. Returns (iterations done, metric history).
    """
    resumable, why = (can_resume(cfg.checkpoint_dir, signature) if cfg.resume
                      else (False, "resume=False: training starts from the SFT model."))
    print(why)
    if resumable:
        return load_ppo_checkpoint(cfg.checkpoint_dir, policy, optimizer, scaler, kl_controller, generator)
    history = History()
    save_ppo_checkpoint(cfg.checkpoint_dir, policy, optimizer, scaler, kl_controller, 0, history, generator, signature)
    return 0, history


def load_ppo_checkpoint(folder: str | Path, policy: PolicyWithValueHead, optimizer: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler, kl_controller: AdaptiveKLController,
                        generator: torch.Generator | None = None) -> tuple[int, History]:
    """Restore a checkpoint written by `save_ppo_checkpoint` in place; returns (iterations done, history).

    `policy` must be freshly built from the SFT model: a checkpoint of iteration 0 holds no weights (it starts there).
    """
    from safetensors.torch import load_model
    folder = Path(folder)
    meta = verify_checkpoint(folder)  # every file's SHA-256 against the manifest
    if meta.get("kind") != PPO_CHECKPOINT_KIND:
        raise CheckpointError(f"{folder} is not a PPO checkpoint of this series (kind {meta.get('kind')!r}).")
    try:
        if meta.get("weights", True):
            load_model(policy, str(folder / "policy.safetensors"), strict=True)
        state = torch.load(folder / PPO_TRAINING_STATE, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:  # empty when saved without loss scaling (bf16 / fp32)
            scaler.load_state_dict(state["scaler"])
        kl_controller.load_state_dict(state["kl_controller"])
        history = History(json.loads((folder / "history.json").read_text()))
    except (RuntimeError, KeyError, ValueError, OSError) as error:
        raise CheckpointError(f"The checkpoint in {folder} does not fit this model or optimizer ({str(error)[:200]}). "
                              "Set RLHF_RESUME=0 to start over, or RLHF_CHECKPOINT_DIR to another folder.") from error
    _set_rng_states(state["rng"], generator)
    return int(state["iteration"]), history


def push_folder_to_hub(folder: str | Path, repo_id: str) -> str:
    """Upload a saved folder to the hub; the token comes from HF_TOKEN or Colab's secrets, never printed."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError
    if get_token() is None:
        raise RLHFError("push_to_hub=True needs a Hugging Face token with write access. In Colab: add a secret "
                        "named HF_TOKEN (key icon in the left bar) and let this notebook read it; elsewhere set "
                        "the HF_TOKEN environment variable. Or set push_to_hub=False: the model is saved locally.")
    api = HfApi()
    try:
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id)
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        if status in (401, 403):
            raise RLHFError(f"The hub refused the upload to {repo_id!r} (HTTP {status}): the token is invalid or "
                            "may not write there. Use a token with write access to your own namespace "
                            "(hub_repo_id='your-name/...'). The model is saved locally either way.") from error
        raise HubUnavailableError(f"The upload of {folder} to {repo_id!r} failed (HTTP {status}). Try again later, "
                                  "or set push_to_hub=False; the model is saved locally either way.") from error
    except Exception as error:
        # Connection failures: OSError (requests, offline mode) or httpx's RequestError family (huggingface_hub >= 1)
        if not (isinstance(error, OSError) or any(c.__name__ == "RequestError" for c in type(error).__mro__)):
            raise
        raise HubUnavailableError(f"Could not upload {folder} to the Hugging Face hub ({type(error).__name__}): it "
                                  "cannot be reached. Check the internet connection, or set push_to_hub=False; "
                                  "the model is saved locally either way.") from error
    return f"https://huggingface.co/{repo_id}"


# -----------------------------------------------------------------------------
# Profiles: the offline assets of the 'smoke' and 'cpu' profiles, built by this code and then loaded
# through the same `load_sst2` / `from_pretrained` calls the full profile uses on the hub.

# The smoke data itself, a template grammar of SST-2-style sentences, lives in smoke_data.py, out of the way.

# Smoke and cpu profiles: building the assets.

BASE_MODEL_SIZES: dict[str, dict[str, int]] = {
    "smoke": dict(vocab_size=1024, n_positions=64, n_embd=64, n_layer=2, n_head=2),
    "cpu": dict(vocab_size=4096, n_positions=64, n_embd=128, n_layer=4, n_head=4),
}
SMOKE_DATA_SIZES = dict(n_train=2000, n_validation=200)
EOS_TOKEN = "<|endoftext|>"


def build_smoke_dataset(folder: str | Path, n_train: int = 2000, n_validation: int = 200, seed: int = 0) -> Path:
    """Write the smoke SST-2 (train.jsonl, validation.jsonl) to `folder`, atomically, unless it is there."""
    folder = Path(folder)
    meta = {"kind": "smoke_sst2", "n_train": n_train, "n_validation": n_validation, "seed": seed}
    if (recover_checkpoint(folder) / MANIFEST).exists() and verify_checkpoint(folder, deep=False) == meta:
        return folder
    import smoke_data  # beside this module; only the smoke profile needs it
    splits = smoke_data.make_smoke_sst2(n_train, n_validation, seed)
    with atomic_directory(folder, meta) as tmp:
        for split, rows in splits.items():
            (tmp / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def train_bpe_tokenizer(sentences: Sequence[str], vocab_size: int, max_length: int) -> Any:
    """A GPT-2-style byte-level BPE tokenizer trained on `sentences`, with GPT-2's EOS token."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([s.strip() for s in sentences], vocab_size=vocab_size, min_frequency=2,
                            special_tokens=[EOS_TOKEN], show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN,
                                   unk_token=EOS_TOKEN, model_max_length=max_length)


def build_base_model(folder: str | Path, dataset_name: str, profile: str, seed: int = 0) -> Path:
    """Save a randomly initialised small GPT-2 and a tokenizer trained on the dataset's training sentences.

    The folder looks like one saved from the hub, so the notebooks load it with the same
    `from_pretrained` calls they use for `gpt2`. Rebuilt only when the dataset or sizes changed.
    """
    from transformers import GPT2Config, GPT2LMHeadModel
    folder, sizes = Path(folder), BASE_MODEL_SIZES[profile]
    meta = {"kind": "causal_lm", "base_for_profile": profile, "dataset": dataset_name, "seed": seed, **sizes}
    if (recover_checkpoint(folder) / MANIFEST).exists():
        saved = verify_checkpoint(folder, deep=False)
        if all(saved.get(k) == v for k, v in meta.items()):
            return folder
    sentences = load_sst2(dataset_name, require_label=False)["train"]["sentence"]
    tokenizer = train_bpe_tokenizer(sentences, sizes["vocab_size"], sizes["n_positions"])
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=sizes["n_positions"], n_embd=sizes["n_embd"],
                        n_layer=sizes["n_layer"], n_head=sizes["n_head"],
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    save_causal_lm(GPT2LMHeadModel(config), tokenizer, folder, meta)
    return folder


def prepare_profile(cfg: BaseConfig) -> None:
    """Build what the smoke and cpu profiles need offline (smoke data, a base model); nothing for 'full'."""
    if cfg.profile == "full":
        return
    if cfg.profile == "smoke":
        # The smoke model's matrices are too small to share between threads: on a busy 2-core CPU a
        # reward-model step took 0.2-0.4 s with 2 threads and 0.01-0.02 s with 1 (measured).
        torch.set_num_threads(1)
    # The assets are fixed (seed 0): a learner's RLHF_SEED changes training, not the data or the vocabulary
    # that the models of the other notebooks were trained with.
    if cfg.profile == "smoke" and cfg.dataset_name == f"{cfg.output_dir}/data/sst2":
        build_smoke_dataset(cfg.dataset_name, seed=0, **SMOKE_DATA_SIZES)
    build_base_model(f"{cfg.output_dir}/base_model", cfg.dataset_name, cfg.profile, seed=0)
