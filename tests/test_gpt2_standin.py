"""benchmarks/gpt2_standin.py builds GPT-2's tokenizer from its vocab.json and merges.txt.

GPT-2's own files cannot be part of the repository, so the test writes files of the same shape: the 256 byte-level
symbols, 50,000 merges of two symbols, and <|endoftext|> as token 50256.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpt2_standin  # noqa: E402


def byte_symbols() -> list[str]:
    """The 256 symbols GPT-2's byte-level BPE writes bytes as: printable bytes as themselves, the rest shifted past 255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, shifted = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + shifted)
            shifted += 1
    return [symbols[byte] for byte in range(256)]


def write_gpt2_shaped_files(folder: Path, merges: int = 50000) -> tuple[Path, Path]:
    """A vocab.json and merges.txt with GPT-2's sizes: 256 symbols, `merges` two-symbol merges, then EOS."""
    base = byte_symbols()
    vocab = {symbol: i for i, symbol in enumerate(base)}
    pairs = [(a, b) for a in base for b in base][:merges]
    for a, b in pairs:
        vocab[a + b] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in pairs), encoding="utf-8")
    return folder / "vocab.json", folder / "merges.txt"


def test_the_tokenizer_has_the_files_vocabulary_and_merges(tmp_path):
    vocab, merges = write_gpt2_shaped_files(tmp_path)
    tokenizer = gpt2_standin.gpt2_tokenizer(vocab, merges)
    assert len(tokenizer) == 50257 and tokenizer.eos_token_id == 50256
    ids = json.loads(vocab.read_text(encoding="utf-8"))
    assert tokenizer('!"').input_ids == [ids['!"']]  # a merge from the file joins two symbols into one token
    assert tokenizer.decode(tokenizer("#$%").input_ids) == "#$%"


def test_files_that_are_not_gpt2s_are_refused_with_what_to_give(tmp_path):
    vocab, merges = write_gpt2_shaped_files(tmp_path, merges=100)
    with pytest.raises(SystemExit, match="357 tokens.*GPT-2's own vocab.json and merges.txt"):
        gpt2_standin.gpt2_tokenizer(vocab, merges)
