"""The Hugging Face hub: a reachability check made when first needed (not at import), loading tokenizers and
models with clear errors, uploading a saved folder."""

from __future__ import annotations

import functools
import os
import socket
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .checkpoints import recover_checkpoint, verify_checkpoint
from .device import use_fused_gelu
from .errors import CheckpointError, HubUnavailableError, RLHFError


def hub_reachable(timeout: float = 2.0) -> bool:
    """True when a TCP connection to the Hugging Face hub opens within `timeout` seconds."""
    host = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        with socket.create_connection((host or "huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


@functools.lru_cache(maxsize=1)
def _probe_hub(timeout: float) -> bool:
    """hub_reachable, asked once per process."""
    return hub_reachable(timeout)


def hub_online(timeout: float = 2.0) -> bool:
    """Whether the hub can be reached; asked when first needed, not at import. Offline, the HF libraries are told so.

    Without this, a download attempt on a machine without internet retries for 20-80 s before it fails. Offline,
    cached files still load and missing ones fail at once (see `HubUnavailableError`). HF_HUB_OFFLINE=1: no probe.
    Call it after importing transformers or datasets: it sets their offline switch, which they read at import.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    if _probe_hub(timeout):
        return True
    import huggingface_hub.constants  # transformers asks it whether it is offline

    huggingface_hub.constants.HF_HUB_OFFLINE = True
    if "datasets.config" in sys.modules:  # datasets keeps its own switch, read at import
        sys.modules["datasets.config"].HF_HUB_OFFLINE = True
    return False


def _hub_error(what: str, name: str, error: Exception) -> HubUnavailableError:
    """The one message for anything that had to come from an unreachable hub."""
    return HubUnavailableError(
        f"Could not load {what} {name!r} from the Hugging Face hub ({type(error).__name__}). "
        "Check the internet connection (in Colab: Runtime > Restart), or run offline: "
        "RLHF_PROFILE=smoke for the tiny built-in profile, or point RLHF_MODEL / RLHF_DATASET "
        "at local copies (a folder saved with save_pretrained; a folder with train/validation files)."
    )


def looks_like_local_path(name_or_path: str) -> bool:
    """True for paths ('./x', '/x', 'a/b/c', 'outputs/x' when outputs/ exists), False for hub ids like 'gpt2' or 'org/name'."""
    path = Path(name_or_path)
    return (
        path.is_absolute()
        or name_or_path.startswith(".")
        or name_or_path.count("/") > 1
        or (len(path.parts) > 1 and Path(path.parts[0]).is_dir())
    )


def load_pretrained(loader: Callable[..., Any], name_or_path: str, what: str, **kwargs: Any) -> Any:
    """Call a `from_pretrained` loader, turning hub failures and half-written folders into clear errors."""
    import transformers

    hub_online()  # after the import: an unreachable hub switches transformers to offline mode
    transformers.logging.set_verbosity_error()  # no per-file progress bars or config chatter in the notebooks
    transformers.logging.disable_progress_bar()
    path = Path(name_or_path)
    if path.is_dir() or looks_like_local_path(name_or_path):
        recover_checkpoint(path)  # a save killed part-way leaves the folder under another name
    if path.is_dir():
        verify_checkpoint(path)
    elif looks_like_local_path(name_or_path):
        raise CheckpointError(
            f"{what.capitalize()} folder {name_or_path!r} does not exist. Check the path "
            "(RLHF_MODEL, RLHF_SFT_MODEL_DIR, ...), or run the notebook that writes it first."
        )
    try:
        return loader(name_or_path, **kwargs)
    except OSError as error:
        if not path.is_dir() and (
            "connect" in str(error).lower() or "offline" in str(error).lower() or not hub_online()
        ):
            raise _hub_error(what, name_or_path, error) from error
        raise


def load_tokenizer(name_or_path: str, padding_side: str = "right") -> Any:
    """The tokenizer, with a pad token (GPT-2 has none: EOS doubles as pad) and the given padding side."""
    from transformers import AutoTokenizer

    tokenizer = load_pretrained(AutoTokenizer.from_pretrained, name_or_path, "the tokenizer")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def load_causal_lm(
    name_or_path: str, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> nn.Module:
    """A causal language model (GPT-2 and friends) in fp32 unless `dtype` says otherwise, on `device`."""
    from transformers import AutoModelForCausalLM

    model = load_pretrained(
        AutoModelForCausalLM.from_pretrained, name_or_path, "the model", dtype=dtype or torch.float32
    )
    return use_fused_gelu(model).to(device)


def push_folder_to_hub(folder: str | Path, repo_id: str) -> str:
    """Upload a saved folder to the hub; the token comes from HF_TOKEN or Colab's secrets, never printed."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    if get_token() is None:
        raise RLHFError(
            "push_to_hub=True needs a Hugging Face token with write access. In Colab: add a secret "
            "named HF_TOKEN (key icon in the left bar) and let this notebook read it; elsewhere set "
            "the HF_TOKEN environment variable. Or set push_to_hub=False: the model is saved locally."
        )
    api = HfApi()
    try:
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id)
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        if status in (401, 403):
            raise RLHFError(
                f"The hub refused the upload to {repo_id!r} (HTTP {status}): the token is invalid or "
                "may not write there. Use a token with write access to your own namespace "
                "(hub_repo_id='your-name/...'). The model is saved locally either way."
            ) from error
        raise HubUnavailableError(
            f"The upload of {folder} to {repo_id!r} failed (HTTP {status}). Try again later, "
            "or set push_to_hub=False; the model is saved locally either way."
        ) from error
    except Exception as error:
        # Connection failures: OSError (requests, offline mode) or httpx's RequestError family (huggingface_hub >= 1)
        if not (isinstance(error, OSError) or any(c.__name__ == "RequestError" for c in type(error).__mro__)):
            raise
        raise HubUnavailableError(
            f"Could not upload {folder} to the Hugging Face hub ({type(error).__name__}): it "
            "cannot be reached. Check the internet connection, or set push_to_hub=False; "
            "the model is saved locally either way."
        ) from error
    return f"https://huggingface.co/{repo_id}"
