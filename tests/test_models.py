"""Models: the reward model's scores, the policy's passes (fast = plain, chunked = whole, no host syncs), memory,
loss scaling for fp16, and the GPT-2-small stand-in."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from conftest import MIXED_LENGTH_PROMPTS, give_freed_memory_back
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import rlhf_utils as ru
from benchmarks import ppo_bench
from rlhf_support.errors import TrainingDivergedError
from rlhf_support.profiles import train_bpe_tokenizer

# ---------------------------------------------------------------------------
# The reward model's scores


@pytest.fixture(scope="module")
def tiny_reward_model():
    from transformers import GPT2Config, GPT2Model

    sentences = ["the film is charming .", "a dull , lifeless mess", "the cast is wonderful", "it drags ."] * 20
    tokenizer = train_bpe_tokenizer(sentences, vocab_size=300, max_length=32)
    tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=32, n_layer=2, n_head=2)
    return ru.ScalarHeadModel(GPT2Model(config)), tokenizer


def test_score_sentences_matches_one_by_one_scores_in_order(tiny_reward_model):
    model, tokenizer = tiny_reward_model
    sentences = ["it drags .", "the film is charming and the cast is wonderful .", "a mess", "the cast is wonderful"]
    model.train()  # dropout on: score_sentences must switch it off and then restore train mode
    rewards = ru.score_sentences(model, tokenizer, sentences, batch_size=3, max_length=32)
    assert model.training
    model.eval()
    with torch.no_grad():
        for i, sentence in enumerate(sentences):
            ids = tokenizer(sentence, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            alone = model.score(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)).item()
            assert rewards[i].item() == pytest.approx(alone, abs=1e-5)


def test_score_sentences_max_length_scores_a_prefix_plus_eos(tiny_reward_model):
    model, tokenizer = tiny_reward_model
    sentence = "the film is charming and the cast is wonderful ."
    k = 3
    ids = tokenizer(sentence, add_special_tokens=False)["input_ids"][:k] + [tokenizer.eos_token_id]
    model.eval()
    with torch.no_grad():
        expected = model.score(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)).item()
    assert ru.score_sentences(model, tokenizer, [sentence], max_length=k + 1).item() == pytest.approx(
        expected, abs=1e-5
    )


# ---------------------------------------------------------------------------
# The policy's passes: fast = plain, no host syncs, fused GELU, the benchmark


def rollout(policy: ru.PolicyWithValueHead, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Left-padded prompts + sampled responses (some ended early): (input_ids, attention_mask, response_start)."""
    eos = policy.lm.config.eos_token_id
    prompt_ids, prompt_mask = ru.pad_batch(MIXED_LENGTH_PROMPTS, eos, side="left")
    responses, response_mask = ru.generate(
        policy.lm, prompt_ids, prompt_mask, 8, eos, eos, generator=torch.Generator().manual_seed(seed)
    )
    return (torch.cat([prompt_ids, responses], 1), torch.cat([prompt_mask, response_mask], 1), prompt_ids.shape[1])


@pytest.mark.parametrize("temperature", [1.0, 0.8])
def test_policy_forward_matches_the_benchmarks_plain_passes(temperature):
    """ru.policy_forward / ru.response_logprobs vs two trunk passes, full logits and a full log_softmax."""
    shapes = ppo_bench.Shapes(
        batch_size=6, prompt_min=1, prompt_max=6, response_length=8, ppo_epochs=1, minibatch_size=6
    )
    bench = ppo_bench.PPOBench("tiny", shapes, torch.device("cpu"), ru.resolve_precision(torch.device("cpu")), "fast")
    bench.cfg.temperature = temperature
    nn.init.normal_(bench.policy.value_head.linear.weight, std=0.5)  # values that are not all 0
    bench.policy.eval()
    input_ids, attention_mask, start = rollout(bench.policy)
    with torch.no_grad():
        logprobs, values, entropy = ru.policy_forward(bench.policy, input_ids, attention_mask, start, temperature)
        plain_logprobs, plain_values, plain_entropy = bench.policy_forward_plain(input_ids, attention_mask, start)
        ref_logprobs = ru.response_logprobs(bench.ref_policy, input_ids, attention_mask, start, temperature)
        plain_ref = bench.ref_logprobs_plain(input_ids, attention_mask, start)
    for fast, plain in [
        (logprobs, plain_logprobs),
        (values, plain_values),
        (entropy, plain_entropy),
        (ref_logprobs, plain_ref),
    ]:
        assert fast.shape == plain.shape == (6, input_ids.shape[1] - start)
        torch.testing.assert_close(fast, plain, atol=1e-5, rtol=0)
    assert values.abs().max() > 0.1  # the value comparison was not 0 == 0
    # with grad too: the training pass is the same function of the parameters
    logprobs_g, values_g, _ = ru.policy_forward(bench.policy, input_ids, attention_mask, start, temperature)
    plain_g, plain_values_g, _ = bench.policy_forward_plain(input_ids, attention_mask, start)
    grads = torch.autograd.grad((logprobs_g.sum() + values_g.sum()), list(bench.policy.parameters()))
    plain_grads = torch.autograd.grad((plain_g.sum() + plain_values_g.sum()), list(bench.policy.parameters()))
    for g, pg in zip(grads, plain_grads):  # fp32 rounding, relative to the gradient's scale
        assert (g - pg).abs().max() <= 1e-5 * max(1.0, pg.abs().max().item())


def test_policy_logits_to_keep_selects_positions(tiny_lm):
    policy = ru.PolicyWithValueHead(tiny_lm).eval()
    input_ids, attention_mask, start = rollout(policy)
    positions = ru.response_positions(input_ids, start)
    assert positions.tolist() == list(range(start - 1, input_ids.shape[1] - 1))
    with torch.no_grad():
        all_logits, values = policy(input_ids, attention_mask)
        kept, kept_values = policy(input_ids, attention_mask, logits_to_keep=positions)
        last3, _ = policy(input_ids, attention_mask, logits_to_keep=3)
    torch.testing.assert_close(kept, all_logits[:, start - 1 : -1], atol=1e-6, rtol=0)
    torch.testing.assert_close(last3, all_logits[:, -3:], atol=1e-6, rtol=0)
    assert torch.equal(kept_values, values)


def test_4d_attention_mask_is_the_one_the_model_builds(tiny_lm):
    prompt_ids, prompt_mask = ru.pad_batch(MIXED_LENGTH_PROMPTS, 0, side="left")  # (B, P), rows padded 0-5 tokens
    positions = ru.positions_from_mask(prompt_mask)
    mask_4d = ru.attention_mask_4d(tiny_lm, prompt_mask)
    assert (
        mask_4d.shape == (len(MIXED_LENGTH_PROMPTS), 1, prompt_ids.shape[1], prompt_ids.shape[1])
        and mask_4d.dtype == torch.bool
    )
    # row 1 is [pad x 5, 9]: its last query sees only itself
    assert mask_4d[1, 0, -1].tolist() == [False] * 5 + [True]
    with torch.no_grad():
        from_2d = tiny_lm(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions).logits
        from_4d = tiny_lm(input_ids=prompt_ids, attention_mask=mask_4d, position_ids=positions).logits
    real = prompt_mask.bool()
    torch.testing.assert_close(from_4d[real], from_2d[real], atol=1e-6, rtol=0)
    # decoding: the last query against every key so far
    assert torch.equal(ru.attention_mask_4d(tiny_lm, prompt_mask, query_length=1), mask_4d[:, :, -1:])
    # another attention implementation gets its 2D mask back
    eager = copy.deepcopy(tiny_lm)
    eager.config._attn_implementation = "eager"
    assert ru.attention_mask_4d(eager, prompt_mask) is prompt_mask


def host_syncs(fn) -> list[str]:
    """The ops run by fn() that read a tensor's value on the host: on a GPU each one waits for the device.

    Reads inside the optimiser's step are left out: the fused AdamW keeps its step counters beside the
    parameters, so on a CPU it reads CPU tensors, and on a GPU its kernel reads them on the GPU.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.events()
    steps = [(e.time_range.start, e.time_range.end) for e in events if e.name.startswith("Optimizer.step")]
    return [
        e.name
        for e in events
        if e.name in ("aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::nonzero")
        and not any(start <= e.time_range.start <= end for start, end in steps)
    ]


def test_inner_loops_never_wait_for_the_device(tiny_lm):
    """A decoding step and a PPO minibatch step queue their work without reading any value back."""
    policy = ru.PolicyWithValueHead(tiny_lm).eval()
    eos = tiny_lm.config.eos_token_id
    prompt_ids, prompt_mask = ru.pad_batch(MIXED_LENGTH_PROMPTS, eos, side="left")
    generator = torch.Generator().manual_seed(0)
    assert (
        host_syncs(
            lambda: ru.generate(
                tiny_lm, prompt_ids, prompt_mask, 6, eos, eos, generator=generator, stop_check_every=100
            )
        )
        == []
    )
    input_ids, attention_mask, start = rollout(policy)
    mask = attention_mask[:, start:]
    with torch.no_grad():
        old_logprobs, old_values, _ = ru.policy_forward(policy, input_ids, attention_mask, start)
    advantages, returns = torch.randn_like(old_logprobs), torch.randn_like(old_values)
    optimizer, scaler = ru.make_optimizer(policy, 1e-4), torch.amp.GradScaler("cpu", enabled=False)

    def minibatch_step():
        logprobs, values, _ = ru.policy_forward(policy, input_ids, attention_mask, start, entropy=False)
        pg_loss, pg_stats = ru.ppo_policy_loss(logprobs, old_logprobs, advantages, mask, 0.2)
        vf_loss, vf_stats = ru.ppo_value_loss(values, old_values, returns, mask, 0.2)
        ru.optimizer_step(pg_loss + 0.1 * vf_loss, optimizer, scaler, policy.parameters(), 1.0)

    minibatch_step()  # the optimiser's state is created on the first step
    assert host_syncs(minibatch_step) == []
    # the check is real: reading a loss back is caught
    assert host_syncs(lambda: ru.masked_mean(old_logprobs, mask).item()) != []


def test_fused_gelu_gives_the_same_model(tiny_lm):
    from transformers.activations import NewGELUActivation

    assert not any(isinstance(m, NewGELUActivation) for m in tiny_lm.modules())  # the loader fused it
    plain = copy.deepcopy(tiny_lm)
    for block in plain.transformer.h:
        block.mlp.act = NewGELUActivation()
    ids = torch.randint(0, tiny_lm.config.vocab_size, (4, 12))
    with torch.no_grad():
        torch.testing.assert_close(tiny_lm(input_ids=ids).logits, plain(input_ids=ids).logits, atol=1e-5, rtol=0)
    ru.use_fused_gelu(plain)
    assert sum(isinstance(m, nn.GELU) and m.approximate == "tanh" for m in plain.modules()) == len(plain.transformer.h)
    x = torch.linspace(-6, 6, 1001)
    torch.testing.assert_close(nn.GELU(approximate="tanh")(x), NewGELUActivation()(x), atol=1e-6, rtol=0)


def test_benchmark_runs_both_modes_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    report = ppo_bench.main(
        [
            "--size",
            "tiny",
            "--device",
            "cpu",
            "--batch-size",
            "8",
            "--minibatch-size",
            "4",
            "--response-length",
            "4",
            "--ppo-epochs",
            "1",
            "--iterations",
            "1",
            "--warmup",
            "0",
            "--compare",
            "--json",
            str(out),
        ]
    )
    saved = json.loads(out.read_text())
    assert saved["speedup_fast_over_plain"] == pytest.approx(report["speedup_fast_over_plain"])
    for mode in ("plain", "fast"):
        result = saved["results"][mode]
        seconds = result["seconds_per_iteration"]
        assert all(seconds[k] > 0 for k in ("generate", "score", "optimise"))
        assert seconds["total"] == pytest.approx(seconds["generate"] + seconds["score"] + seconds["optimise"])
        assert result["episodes_per_second"] == pytest.approx(8 / seconds["total"])
        assert result["mfu_optimise"] is None  # CPU
        assert (
            "resident set" in result["peak_memory_kind"] and result["peak_memory_gib"] > 0.05
        )  # torch alone takes more
        assert set(result["phase_peak_above_start_gib"]) == {"generate", "score", "optimise"}
        assert math.isfinite(result["last_stats"]["loss"])


def test_the_benchmarks_cpu_memory_peak_sees_a_temporary_tensor():
    cpu = torch.device("cpu")
    if not ppo_bench.reset_peak_memory(cpu):
        pytest.skip("this kernel does not let a process reset its peak RSS (/proc/self/clear_refs)")
    give_freed_memory_back()  # memory earlier tests freed would otherwise serve the temporary without a new page
    clock = ppo_bench.PhaseClock(cpu)
    clock.begin("small")
    clock.begin("big")
    temporary = torch.ones(50_000_000)  # 200 MB, freed before the phase ends
    del temporary
    clock.begin(None)
    assert clock.peak_above_start["big"] > 190e6 > 20e6 > clock.peak_above_start["small"]


def test_peak_flops_by_device_name(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: names.pop(0))
    names = [
        "NVIDIA H200",
        "NVIDIA H100 80GB HBM3",
        "NVIDIA H100 PCIe",
        "NVIDIA A100-SXM4-40GB",
        "Tesla T4",
        "NVIDIA GeForce RTX 3090",
    ]
    cuda = torch.device("cuda")
    assert ppo_bench.peak_flops(cuda) == (989e12, "bf16")
    assert ppo_bench.peak_flops(cuda) == (989e12, "bf16")
    assert ppo_bench.peak_flops(cuda) == (756e12, "bf16")
    assert ppo_bench.peak_flops(cuda) == (312e12, "bf16")
    assert ppo_bench.peak_flops(cuda) == (65e12, "fp16")
    assert ppo_bench.peak_flops(cuda) == (None, "")
    assert ppo_bench.peak_flops(torch.device("cpu")) == (None, "")


# ---------------------------------------------------------------------------
# Memory: chunked passes


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
    assert ru.policy_forward(policy, ids, mask, start, 0.9, entropy=False, chunk_size=8)[2] is None


# ---------------------------------------------------------------------------
# Loss scaling: skipped steps, infinite gradients


ROOT = Path(__file__).resolve().parents[1]


def test_an_overflowing_step_is_skipped_and_reported_as_inf():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 1))
    optimizer = ru.make_optimizer(model, lr=1e-2)
    precision = ru.resolve_precision(torch.device("cpu"), "fp16")
    scaler = precision.grad_scaler(init_scale=2.0**40)  # far too large: fp16 gradients overflow
    x = torch.randn(16, 8)
    norms, weights = [], []
    for _ in range(30):
        before = model[0].weight.detach().clone()
        with precision.autocast():
            loss = model(x).float().pow(2).mean()
        norms.append(ru.optimizer_step(loss, optimizer, scaler, model.parameters(), 1.0))
        weights.append(not torch.equal(before, model[0].weight))
    finite = [math.isfinite(n.item()) for n in norms]
    assert not finite[0] and not weights[0]  # overflow: the step was skipped, the weights untouched
    assert finite[-1] and weights[-1]  # the scale came down far enough: steps are taken again
    assert all(f == w for f, w in zip(finite, weights))  # an infinite norm means exactly "skipped"
    assert scaler.get_scale() < 2.0**40
    metrics = ru.grad_norm_metrics(torch.stack(norms), scaler, "policy")
    assert metrics["policy/skipped_steps"] == finite.count(False) >= 1
    assert math.isfinite(metrics["policy/grad_norm"])
    assert metrics["policy/grad_norm"] == pytest.approx(
        sum(n.item() for n, f in zip(norms, finite) if f) / finite.count(True)
    )


def test_an_infinite_gradient_without_loss_scaling_stops_training():
    scaler = ru.resolve_precision(torch.device("cpu"), "fp32").grad_scaler()
    assert ru.grad_norm_metrics(torch.tensor(2.0), scaler, "train") == {
        "train/skipped_steps": 0.0,
        "train/grad_norm": 2.0,
    }
    with pytest.raises(TrainingDivergedError, match="grad_norm became inf at iteration/step 7"):
        ru.grad_norm_metrics(torch.tensor(math.inf), scaler, "train", step=7)
