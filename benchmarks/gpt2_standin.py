"""A stand-in for GPT-2 small, for checking the full profile where the Hugging Face hub cannot be reached.

GPT-2 small's architecture (GPT2Config() defaults: 12 layers, 768 wide, 50,257 tokens, 1,024 positions) with
RANDOM weights, and GPT-2's real tokenizer built from its vocab.json and merges.txt (give their paths; any copy
of GPT-2's tokenizer files will do). Saved like a hub download, so the notebooks load it with the same
from_pretrained calls they use for "gpt2":

    python benchmarks/gpt2_standin.py --vocab vocab.json --merges merges.txt --out outputs/gpt2-standin
    RLHF_MODEL=outputs/gpt2-standin RLHF_DATASET=/path/to/sst2 RLHF_DEVICE=cpu ... jupyter nbconvert --execute ...

What it can show: that every full-profile code path runs (EOS in the labels, left padding, the reward read at the
right token, resuming), and the time and memory of a step at full size. What it cannot: any quality figure, since
the weights are random. Nothing from the tokenizer files or the model is part of this repository.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import rlhf_utils as ru  # noqa: E402


def gpt2_tokenizer(vocab: Path, merges: Path):
    """GPT-2's tokenizer from its vocab.json and merges.txt, checked to be GPT-2's (50,257 tokens, EOS 50256)."""
    from transformers import GPT2TokenizerFast

    # transformers 5 names these vocab= and merges= (vocab_file= is swallowed by **kwargs and gives an empty vocabulary)
    tokenizer = GPT2TokenizerFast(vocab=str(vocab), merges=str(merges), model_max_length=1024)
    if len(tokenizer) != 50257 or tokenizer.eos_token_id != 50256:
        raise SystemExit(
            f"{vocab}: {len(tokenizer)} tokens, EOS id {tokenizer.eos_token_id}; GPT-2's are 50257 and "
            "50256. Give GPT-2's own vocab.json and merges.txt."
        )
    return tokenizer


def build(vocab: Path, merges: Path, out: Path, seed: int = 0) -> Path:
    """Save GPT-2 small's architecture with random weights and GPT-2's tokenizer to `out`; returns it."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = gpt2_tokenizer(vocab, merges)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config())  # the defaults are GPT-2 small
    return ru.save_causal_lm(model, tokenizer, out, meta={"stand_in_for": "gpt2", "weights": "random", "seed": seed})


def main(argv: list[str] | None = None) -> None:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=Path, required=True, help="GPT-2's vocab.json")
    parser.add_argument("--merges", type=Path, required=True, help="GPT-2's merges.txt")
    parser.add_argument("--out", type=Path, default=Path("outputs/gpt2-standin"), help="default outputs/gpt2-standin")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    folder = build(args.vocab, args.merges, args.out, args.seed)
    print(f"saved a GPT-2-small stand-in (random weights, GPT-2's tokenizer) to {folder}")


if __name__ == "__main__":
    main()
