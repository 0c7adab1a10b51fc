"""Checkpoints. A checkpoint is a folder with a manifest (checkpoint.json) listing every file's size and SHA-256.
It is written under a temporary name and renamed into place, so the folder at the final path is either the old
complete checkpoint or the new complete one, never half of one; the previous version stays as the spare (*.old)
that the next save overwrites in place, so saving deletes nothing (on Google Drive, deletions fill the Trash)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch.nn as nn

from .colab import drive_error_hint
from .config import ENV_PREFIX, BaseConfig
from .errors import CheckpointError, RLHFError
from .reporting import library_bars_off

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


def make_writable_folder(folder: str | Path, setting: str = "output_dir") -> Path:
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
        raise CheckpointError(
            f"Cannot write to {folder} ({error.strerror or error}). Choose a writable folder "
            f"with {ENV_PREFIX}{setting.upper()} (or {setting}= in the Configuration cell)." + drive_error_hint(error)
        ) from error
    return folder


def make_output_folders(cfg: BaseConfig) -> None:
    """Check, before any training, that every folder this notebook will write into can be written.

    Model and checkpoint folders are written under a temporary name beside them, so their parent is checked.
    """
    make_writable_folder(cfg.output_dir, "output_dir")
    if cfg.figures_dir:
        make_writable_folder(cfg.figures_dir, "figures_dir")
    for setting in ("checkpoint_dir", "policy_dir"):
        if getattr(cfg, setting, ""):  # '' (no checkpoints) writes nothing
            make_writable_folder(Path(getattr(cfg, setting)).parent, setting)


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
    owner = temporary.name[len(final_name) + len(".tmp-") :]
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


def spare_folder(final_dir: Path) -> Path:
    """Where the previous version of `final_dir` is kept, as the spare the next save overwrites: <final_dir>.old."""
    return Path(str(final_dir) + ".old")


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
    old = spare_folder(final_dir)
    parent = final_dir.parent
    temporaries = [p for p in parent.glob(final_dir.name + ".tmp-*") if p.is_dir()] if parent.is_dir() else []
    stale = [p for p in temporaries if _writer_gone(p, final_dir.name)]
    if not final_dir.exists():
        complete = sorted(
            (p for p in stale + ([old] if old.is_dir() else []) if _is_complete(p)),
            key=lambda p: json.loads((p / MANIFEST).read_text()).get("written", ""),
        )
        if complete:
            complete[-1].rename(final_dir)
            if complete[-1] in stale:
                stale.remove(complete[-1])
                print(f"{final_dir}: an interrupted save had finished writing; its new version is now in place.")
            else:  # a save that failed between its renames, or a folder deleted by hand
                print(
                    f"{final_dir} was missing, so its previous version ({old.name}) is back in place, as after a "
                    f"save that failed part-way. If you deleted {final_dir.name} to start afresh, delete {old.name} "
                    "as well."
                )
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
    old = spare_folder(final_dir)
    if not tmp.exists() and old.is_dir():
        old.rename(tmp)
    tmp.mkdir(exist_ok=True)
    found = {p for p in tmp.rglob("*") if p.is_file()}
    for path in found:
        os.truncate(path, 0)
    return found


def _timestamp() -> str:
    """Now, to the nanosecond, from one clock reading: manifests sort by it (which of two saves is newer)."""
    now = time.time_ns()
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now // 10**9)) + f".{now % 10**9:09d}"


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
    tmp, old = Path(str(final_dir) + f".tmp-{host_id()}-{os.getpid()}"), spare_folder(final_dir)
    try:
        final_dir.parent.mkdir(parents=True, exist_ok=True)
        recover_checkpoint(final_dir)
        reused = _reuse_as_temporary(final_dir, tmp)
    except OSError as error:
        raise CheckpointError(
            f"Cannot write {final_dir} ({error.strerror or error}). Choose a writable folder "
            "for it: RLHF_OUTPUT_DIR, or the RLHF_..._DIR setting that names this folder." + drive_error_hint(error)
        ) from error
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
        manifest = {
            "format": 1,
            "written": _timestamp(),
            "meta": dict(meta or {}),
            "files": files,
        }
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        if final_dir.exists():
            if old.exists():  # a spare another runtime left meanwhile: removing it must never fail this save
                _set_aside(old)
            final_dir.rename(old)  # the previous version stays complete until the new one is in place
        tmp.rename(final_dir)
    except BaseException as error:
        if tmp.exists():
            if final_dir.exists() and not old.exists():
                tmp.rename(old)  # kept as the spare, as the save found it (emptied)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, OSError) and not isinstance(error, RLHFError):
            raise CheckpointError(
                f"Writing {final_dir} failed ({error.strerror or error}); the previous version, if "
                "any, is kept." + drive_error_hint(error)
            ) from error
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
            raise CheckpointError(
                f"{folder} has no manifest and an interrupted save lies beside it: it may be "
                "half-written. Run the notebook that writes it again."
            )
        return {}
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(
            f"{manifest_path} cannot be read ({error}); the checkpoint is damaged. "
            "Run the notebook that writes it again." + drive_error_hint(error)
        ) from error
    for name, expected in manifest["files"].items():
        path = folder / name
        size = path.stat().st_size if path.exists() else None
        if size is None or size < expected["bytes"]:
            state = (
                "missing"
                if size is None
                else f"shorter than its manifest says ({size:,} of {expected['bytes']:,} bytes)"
            )
            raise CheckpointError(
                f"{path} is {state}. "
                "If another Colab runtime saved this folder to Google Drive in the last minutes, its upload may "
                "still be under way: wait a few minutes, then run this cell again (the previous complete version, "
                "if any, is kept). Otherwise the save was cut off: run the notebook that writes it again."
            )
        if size != expected["bytes"] or (deep and _sha256(path) != expected["sha256"]):
            raise CheckpointError(
                f"{path} does not match its manifest: the checkpoint is corrupt or was changed "
                "after saving. Run the notebook that writes it again."
            )
    return manifest.get("meta", {})


def vocabulary_fingerprint(tokenizer: Any) -> str:
    """A short hash of the tokenizer's vocabulary: equal fingerprints mean the same token ids."""
    items = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def save_causal_lm(lm: nn.Module, tokenizer: Any, folder: str | Path, meta: Mapping[str, Any] | None = None) -> Path:
    """Save a causal LM and its tokenizer as safetensors, atomically."""
    meta = {"kind": "causal_lm", "vocabulary": vocabulary_fingerprint(tokenizer), **(meta or {})}
    with atomic_directory(folder, meta) as tmp:
        with library_bars_off():  # "Writing model shards": one shard, written in a moment
            lm.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(folder)


REWARD_MODEL_LAYOUT = 2  # 2: reward_config.json holds the decision threshold

REWARD_CONFIG = "reward_config.json"


def save_reward_model(
    model: nn.Module,
    tokenizer: Any,
    folder: str | Path,
    score_mean: float,
    score_std: float,
    threshold: float,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Save the reward model atomically: trunk + head weights (safetensors), its config, the tokenizer, and in
    reward_config.json the normalisation (mean, std) and the threshold above which a raw score means "positive"."""
    from safetensors.torch import save_file

    info = {
        "layout": REWARD_MODEL_LAYOUT,
        "head": "linear(hidden_size -> 1) on the last real token",
        "score_mean": float(score_mean),
        "score_std": float(score_std),
        "threshold": float(threshold),
        "vocabulary": vocabulary_fingerprint(tokenizer),
        **(meta or {}),
    }
    with atomic_directory(folder, {"kind": "reward_model", **info}) as tmp:
        model.trunk.config.save_pretrained(tmp)
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / REWARD_CONFIG).write_text(json.dumps(info, indent=1))
        tokenizer.save_pretrained(tmp)
    return Path(folder)


def reward_model_folder(folder: str | Path) -> tuple[Path, dict[str, Any]]:
    """The folder of a reward model saved by `save_reward_model`, verified, and its reward_config.json; a
    CheckpointError that says what to run when it is missing, damaged or of another layout."""
    folder = recover_checkpoint(folder)
    if not folder.is_dir():
        raise CheckpointError(
            f"No reward model at {folder}. Run 2-RM Training.ipynb first (it saves there), "
            "or set RLHF_REWARD_MODEL_DIR to the folder that holds one."
        )
    verify_checkpoint(folder)
    info_path = folder / REWARD_CONFIG
    if not info_path.exists():
        raise CheckpointError(
            f"{folder} has no {REWARD_CONFIG}: it is not a reward model saved by this series "
            "(or is from an older layout). Re-run 2-RM Training.ipynb to save it again."
        )
    info = json.loads(info_path.read_text())
    if info.get("layout") != REWARD_MODEL_LAYOUT:
        raise CheckpointError(
            f"{folder} uses reward-model layout {info.get('layout')}, this code reads layout "
            f"{REWARD_MODEL_LAYOUT}. Re-run 2-RM Training.ipynb to save it in the current layout."
        )
    return folder, info


def load_reward_weights(model: nn.Module, folder: Path) -> None:
    """Load the weights `save_reward_model` wrote in `folder` into `model`: every tensor, or a CheckpointError."""
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{folder}/model.safetensors does not fit the model: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}. Re-run 2-RM Training.ipynb."
        )


def require_same_vocabulary(policy_tokenizer: Any, reward_tokenizer: Any) -> None:
    """Refuse a reward model whose token ids mean other tokens than the policy's."""
    a, b = vocabulary_fingerprint(policy_tokenizer), vocabulary_fingerprint(reward_tokenizer)
    if a != b:
        raise CheckpointError(
            f"The reward model's vocabulary ({b}, {len(reward_tokenizer)} tokens) differs from the policy's "
            f"({a}, {len(policy_tokenizer)} tokens): it would read the policy's token ids as other words. "
            "Train both notebooks with the same model family and profile."
        )
