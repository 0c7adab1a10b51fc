"""Memory of the no-gradient passes over a rollout batch: their largest temporary is set by the chunk size.

At GPT-2's vocabulary one (B, R, V) tensor of 256 episodes x 24 tokens is 1.2 GB in fp32, and log-softmax and
entropy make several; computed in chunks of rows, the largest tensor does not grow with the batch. Measured
here on the CPU by recording the size of every tensor an operation returns (a TorchDispatchMode).
"""

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import rlhf_utils as ru


class LargestTensor(TorchDispatchMode):
    """Records the bytes of the largest tensor any operation returns while active."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.bytes = max(self.bytes, leaf.numel() * leaf.element_size())
        return out


def batch(tokenizer, size: int, response_length: int = 12) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A left-padded batch of [prompt | response] rows of random tokens, (B, P + R), and P."""
    generator = torch.Generator().manual_seed(size)
    rows = [
        torch.randint(1, 1000, (int(n),), generator=generator).tolist()
        for n in torch.randint(2, 9, (size,), generator=generator)
    ]
    prompt_ids, prompt_mask = ru.pad_batch(rows, tokenizer.pad_token_id, side="left")
    responses = torch.randint(1, 1000, (size, response_length), generator=generator)
    return (
        torch.cat([prompt_ids, responses], 1),
        torch.cat([prompt_mask, torch.ones_like(responses)], 1),
        prompt_ids.shape[1],
    )


def largest(fn) -> int:
    with torch.no_grad(), LargestTensor() as mode:
        fn()
    return mode.bytes


def test_the_rollout_passes_largest_temporary_does_not_grow_with_the_batch(tiny_lm, tokenizer):
    policy = ru.PolicyWithValueHead(tiny_lm).eval()
    sizes = {}
    for size in (16, 64):
        ids, mask, start = batch(tokenizer, size)
        sizes[size] = {
            "policy, chunks of 16": largest(
                lambda ids=ids, mask=mask, start=start: ru.policy_forward(policy, ids, mask, start, 0.9, chunk_size=16)
            ),
            "reference, chunks of 16": largest(
                lambda ids=ids, mask=mask, start=start: ru.response_logprobs(
                    tiny_lm, ids, mask, start, 0.9, chunk_size=16
                )
            ),
            "policy, whole batch": largest(
                lambda ids=ids, mask=mask, start=start: ru.policy_forward(policy, ids, mask, start, 0.9)
            ),
        }
    assert sizes[64]["policy, chunks of 16"] == sizes[16]["policy, chunks of 16"]
    assert sizes[64]["reference, chunks of 16"] == sizes[16]["reference, chunks of 16"]
    assert sizes[64]["policy, whole batch"] >= 3.5 * sizes[16]["policy, whole batch"]  # what the chunks avoid
    vocab_tensor = 16 * 12 * tiny_lm.config.vocab_size * 4  # (chunk, R, V) in fp32: the biggest one left
    assert sizes[64]["policy, chunks of 16"] == vocab_tensor


def test_chunked_passes_give_the_same_results(tiny_lm, tokenizer):
    policy = ru.PolicyWithValueHead(tiny_lm).eval()
    torch.nn.init.normal_(policy.value_head.linear.weight, std=0.1)
    ids, mask, start = batch(tokenizer, 37)  # not a multiple of the chunk size
    with torch.no_grad():
        whole = ru.policy_forward(policy, ids, mask, start, 0.9)
        chunked = ru.policy_forward(policy, ids, mask, start, 0.9, chunk_size=8)
        ref_whole = ru.response_logprobs(tiny_lm, ids, mask, start, 0.9)
        ref_chunked = ru.response_logprobs(tiny_lm, ids, mask, start, 0.9, chunk_size=8)
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(ref_whole, ref_chunked, atol=1e-5, rtol=0)
    assert ru.policy_forward(policy, ids, mask, start, 0.9, with_entropy=False, chunk_size=8)[2] is None
