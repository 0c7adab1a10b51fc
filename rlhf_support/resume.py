"""PPO's inputs and its resumable checkpoints: where notebook 3 finds the SFT and reward models, what a checkpoint
holds, when the loop writes one, and resuming exactly where an interrupted run stopped."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .checkpoints import MANIFEST, atomic_directory, recover_checkpoint, verify_checkpoint
from .colab import drive_mount_point, in_colab
from .config import ENV_PREFIX, HUB_REPO_ID, PPOConfig, bookkeeping_fields
from .errors import CheckpointError, HubUnavailableError
from .hub import looks_like_local_path
from .reporting import History


class KLController(typing.Protocol):
    """What a checkpoint keeps of the KL coefficient's controller (rlhf_utils.AdaptiveKLController and its fixed twin)."""

    value: float

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


# Where each input of 3-RLHF.ipynb comes from: its setting -> (what, the notebook that writes it, an example hub id)
PPO_INPUTS = {
    "sft_model_dir": ("SFT model", "1-SFT.ipynb", "your-name/gpt2-sst2-sft"),
    "reward_model_dir": ("reward model", "2-RM Training.ipynb", "your-name/gpt2-sst2-reward"),
}


def fetch_from_hub(repo_id: str, setting: str) -> Path:
    """Download (or find in the local cache) the input `setting` of PPO_INPUTS that `push_folder_to_hub` uploaded.

    The whole folder comes back, manifest included, so the loaders verify it as they verify a local one.
    Errors name the setting that asked for it and the local way instead. Returns the folder.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    what, notebook, _ = PPO_INPUTS[setting]
    instead = (
        f"Or set {ENV_PREFIX}{setting.upper()} to a local folder that holds one (run {notebook} first; in "
        "Colab, with the outputs on the same Drive folder)."
    )
    try:
        return Path(snapshot_download(repo_id))
    except RepositoryNotFoundError as error:
        raise CheckpointError(
            f"There is no {what} {repo_id!r} on the Hugging Face hub (or it is private: give a "
            f"token that may read it, as HF_TOKEN or Colab's secret). {instead}"
        ) from error
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        raise HubUnavailableError(
            f"Could not fetch the {what} {repo_id!r} from the Hugging Face hub "
            f"({type(error).__name__}): no connection, and no copy in the local cache. Check "
            f"the internet connection (in Colab: Runtime > Restart). {instead}"
        ) from error


def find_ppo_inputs(cfg: PPOConfig) -> tuple[Path, Path]:
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
            missing.append(
                f"No {what} at {value}: run {notebook} first (same profile; in Colab, with the same Drive "
                f"folder), or set {ENV_PREFIX}{setting.upper()} to a folder that holds one, or to the hub "
                f"repo {notebook} pushed it to with push_to_hub=True (e.g. {example})."
            )
    if missing:
        raise CheckpointError("\n".join(missing))
    return found[0], found[1]


PPO_CHECKPOINT_KIND = "ppo_checkpoint"

PPO_TRAINING_STATE = "training_state.pt"

PPO_BOOKKEEPING_FIELDS = bookkeeping_fields(PPOConfig)  # declared on each field: param(..., training=False)


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
    input models (their local folders, as `find_ppo_inputs` returns them)."""

    def portable(value: Any) -> Any:  # a path inside output_dir is the same setting wherever output_dir is mounted
        prefix = cfg.output_dir.rstrip("/") + "/"
        return "{output_dir}/" + value[len(prefix) :] if isinstance(value, str) and value.startswith(prefix) else value

    settings = {
        f.name: portable(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.name not in PPO_BOOKKEEPING_FIELDS
    }
    return {
        "settings": settings,
        "sft_model": folder_fingerprint(sft_model_path),
        "reward_model": folder_fingerprint(reward_model_path),
    }


def _rng_states(generator: torch.Generator | None) -> dict[str, Any]:
    """Every random number generator's state, in types torch.load(weights_only=True) reads back."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "generator": generator.get_state() if generator is not None else None,
    }


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


def save_ppo_checkpoint(
    folder: str | Path,
    policy: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    kl_controller: KLController,
    iteration: int,
    history: History,
    generator: torch.Generator | None = None,
    signature: Mapping[str, Any] | None = None,
) -> Path:
    """Write everything needed to continue PPO after `iteration` completed iterations, atomically.

    At iteration 0 the weights are the SFT model's (and a zero value head), which the notebook has just loaded, so
    they are not written again: that checkpoint holds the random states and settings alone (kilobytes, not 1.5 GB).
    """
    from safetensors.torch import save_model

    meta = {
        "kind": PPO_CHECKPOINT_KIND,
        "iteration": int(iteration),
        "signature": dict(signature or {}),
        "weights": iteration > 0,
    }
    with atomic_directory(folder, meta) as tmp:
        if iteration > 0:
            save_model(policy, str(tmp / "policy.safetensors"))  # tied GPT-2 embeddings are stored once
        torch.save(
            {
                "iteration": int(iteration),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "kl_controller": kl_controller.state_dict(),
                "rng": _rng_states(generator),
            },
            tmp / PPO_TRAINING_STATE,
        )
        (tmp / "history.json").write_text(json.dumps(history.rows))
    return Path(folder)


def checkpoint_due(iteration: int, cfg: PPOConfig, seconds_since_last: float) -> bool:
    """Whether the PPO loop writes a checkpoint after `iteration`: every checkpoint_every iterations, after
    checkpoint_minutes since the last one, and at the end."""
    return (
        iteration == cfg.num_iterations
        or (cfg.checkpoint_every > 0 and iteration % cfg.checkpoint_every == 0)
        or (cfg.checkpoint_minutes > 0 and seconds_since_last >= 60 * cfg.checkpoint_minutes)
    )


def ppo_checkpoint_bytes(policy_weight_bytes: int) -> int:
    """Size of a PPO checkpoint from the size of the policy's weights (fp32): the weights and AdamW's two moments."""
    return 3 * policy_weight_bytes


def ppo_write_plan(cfg: PPOConfig, minutes: Sequence[float] = (20, 30, 40)) -> str:
    """What this run will write under its output folder (on Google Drive in Colab), from the SFT model's size."""
    manifest = Path(cfg.sft_model_dir) / MANIFEST
    if not manifest.exists():
        return f"(What PPO writes is known once the SFT model is in {cfg.sft_model_dir}.)"
    files = json.loads(manifest.read_text())["files"]
    weights = sum(entry["bytes"] for name, entry in files.items() if name.endswith(".safetensors"))
    policy = sum(entry["bytes"] for entry in files.values())
    checkpoint = ppo_checkpoint_bytes(weights)
    gb = lambda n: f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"
    where = (
        " (on Google Drive)"
        if in_colab() and Path(cfg.output_dir).resolve().is_relative_to(drive_mount_point().resolve())
        else ""
    )
    if not cfg.checkpoint_dir:
        return f"PPO writes no checkpoint (checkpoint_dir is ''), then the policy, {gb(policy)}, to {cfg.policy_dir}."
    when = [f"every {cfg.checkpoint_every} iterations"] if cfg.checkpoint_every else []
    when += [f"every {cfg.checkpoint_minutes:g} minutes of PPO"] if cfg.checkpoint_minutes else []
    lines = [
        f"PPO writes to {cfg.output_dir}{where}: a checkpoint of about {gb(checkpoint)} {' and '.join(when)} "
        f"and at the end, then the policy, {gb(policy)}. The checkpoint folder and its spare (.old) are "
        "overwritten in place: nothing goes to Drive's Trash."
    ]
    if cfg.checkpoint_minutes and not cfg.checkpoint_every:
        lines += [
            f"  a run of {m:g} minutes: {math.ceil(m / cfg.checkpoint_minutes)} checkpoints, "
            f"{gb(math.ceil(m / cfg.checkpoint_minutes) * checkpoint + policy)}"
            for m in minutes
        ]
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
        raise CheckpointError(
            f"{folder} is not a PPO checkpoint of this series (kind {meta.get('kind')!r}). "
            "Set RLHF_CHECKPOINT_DIR to another folder, or delete this one."
        )
    saved = meta.get("signature", {})
    if saved != dict(signature):
        changes = [
            f"{k}: {saved.get('settings', {}).get(k)!r} -> {v!r}"
            for k, v in signature.get("settings", {}).items()
            if saved.get("settings", {}).get(k) != v
        ]
        changes += [
            f"the {k.replace('_', ' ')} changed"
            for k in ("sft_model", "reward_model")
            if saved.get(k) != signature.get(k)
        ]
        return False, (
            f"The checkpoint in {folder} comes from a different run ({'; '.join(changes) or 'other settings'}): "
            "training starts from the SFT model and will replace it."
        )
    return True, (
        f"Resuming from the checkpoint in {folder}: {meta['iteration']} iterations done. "
        "To start from the SFT model instead, run `%env RLHF_RESUME=0` before the Configuration cell."
    )


def resume_or_start(
    cfg: PPOConfig,
    signature: Mapping[str, Any],
    policy: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    kl_controller: KLController,
    generator: torch.Generator,
) -> tuple[int, History]:
    """Continue from cfg.checkpoint_dir when it holds this run's checkpoint (and cfg.resume), else start over.

    Prints which, and why. Starting over writes iteration 0 as a checkpoint first, so that an interrupted
    run always restarts from a saved state. Returns (iterations done, metric history).
    """
    if not cfg.checkpoint_dir:
        print("checkpoint_dir is '': this run writes no checkpoint and starts from the SFT model.")
        return 0, History()
    resumable, why = (
        can_resume(cfg.checkpoint_dir, signature)
        if cfg.resume
        else (False, "resume=False: training starts from the SFT model.")
    )
    print(why)
    if resumable:
        return load_ppo_checkpoint(cfg.checkpoint_dir, policy, optimizer, scaler, kl_controller, generator)
    history = History()
    save_ppo_checkpoint(cfg.checkpoint_dir, policy, optimizer, scaler, kl_controller, 0, history, generator, signature)
    return 0, history


def load_ppo_checkpoint(
    folder: str | Path,
    policy: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    kl_controller: KLController,
    generator: torch.Generator | None = None,
) -> tuple[int, History]:
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
        raise CheckpointError(
            f"The checkpoint in {folder} does not fit this model or optimizer ({str(error)[:200]}). "
            "Set RLHF_RESUME=0 to start over, or RLHF_CHECKPOINT_DIR to another folder."
        ) from error
    _set_rng_states(state["rng"], generator)
    return int(state["iteration"]), history
