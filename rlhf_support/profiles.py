"""The smoke and cpu profiles' own assets, built offline: the smoke SST-2 (smoke_data.py), a BPE tokenizer, and
randomly initialised GPT-2 base models."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .checkpoints import MANIFEST, atomic_directory, recover_checkpoint, save_causal_lm, verify_checkpoint
from .config import BaseConfig
from .data import load_sst2

BASE_MODEL_SIZES: dict[str, dict[str, int]] = {
    "smoke": dict(vocab_size=1024, n_positions=64, n_embd=64, n_layer=2, n_head=2),
    "cpu": dict(vocab_size=24576, n_positions=64, n_embd=128, n_layer=4, n_head=4),
}

SMOKE_DATA_SIZES = dict(n_train=2000, n_validation=200)

EOS_TOKEN = "<|endoftext|>"


def build_smoke_dataset(folder: str | Path, n_train: int = 2000, n_validation: int = 200, seed: int = 0) -> Path:
    """Write the smoke SST-2 (train.jsonl, validation.jsonl) to `folder`, atomically, unless it is there."""
    folder = Path(folder)
    meta = {"kind": "smoke_sst2", "n_train": n_train, "n_validation": n_validation, "seed": seed}
    if (recover_checkpoint(folder) / MANIFEST).exists() and verify_checkpoint(folder, deep=False) == meta:
        return folder
    from . import smoke_data  # only the smoke profile needs it

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
    bpe.train_from_iterator(
        [s.strip() for s in sentences],
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN],
        show_progress=False,
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        model_max_length=max_length,
    )


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
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=sizes["n_positions"],
        n_embd=sizes["n_embd"],
        n_layer=sizes["n_layer"],
        n_head=sizes["n_head"],
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
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
