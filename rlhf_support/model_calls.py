"""How the series calls Hugging Face models cheaply: the 4D attention mask (no host sync per pass), the KV cache's
argument name across transformers versions, and no-gradient passes in chunks of rows (bounded memory). Speed and
memory plumbing of rlhf_utils' forward passes: the results are the same without it."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
import torch.nn as nn


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
    query_positions = key_positions[keys - (query_length or keys) :]  # (Q,)
    causal = key_positions[None, :] <= query_positions[:, None]  # (Q, K)
    return causal[None, None] & attention_mask.bool()[:, None, None, :]  # (B, 1, Q, K)


def kv_cache_name(lm: nn.Module) -> str:
    """The name of the KV-cache argument and output: `cache` from transformers 5.24 on, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"


def in_chunks(fn: Callable[[slice], tuple], batch: int, chunk_size: int | None) -> tuple:
    """fn(rows) for consecutive slices of at most chunk_size rows, its outputs concatenated along dim 0.

    A no-gradient pass over a whole rollout batch holds (B, R, V) logits, several copies of them while
    log-softmax and entropy are computed: at GPT-2's 50,257-token vocabulary, 256 episodes of 24 tokens make
    each copy 1.2 GB in fp32. In chunks, the largest temporary is set by chunk_size, not by B.
    """
    if not chunk_size or chunk_size >= batch:
        return fn(slice(0, batch))
    parts = [fn(slice(start, start + chunk_size)) for start in range(0, batch, chunk_size)]
    return tuple(None if part[0] is None else torch.cat(part) for part in zip(*parts))
