"""The fast paths of rlhf_utils compute what the plain versions compute.

Speed work must not change the math: each fast piece (inverse-CDF sampling, the KV-cache loop,
one shared-trunk pass with logits only where PPO reads them, the fused GELU, the fused AdamW) is
checked here against a plain version written without it, in fp32.
"""

import copy
import json
import math

import pytest
import torch
import torch.nn as nn

import rlhf_utils as ru
from benchmarks import ppo_bench

PROMPTS = [[5, 17, 3], [9], [40, 2, 8, 31, 12, 6], [7, 7], [23, 4, 19, 1], [11, 30, 2, 5, 5]]


def with_eos_bias(lm: nn.Module, bias: float, eos_token_id: int) -> nn.Module:
    """Add `bias` to the EOS logit (the tied LM head has no bias of its own), so that rows end early."""
    b = torch.zeros(lm.lm_head.weight.shape[0])
    b[eos_token_id] = bias
    lm.lm_head.bias = nn.Parameter(b)
    return lm


# ---------------------------------------------------------------------------
# Sampling


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's statistic of observed counts against the expected n * p, over the tokens with p > 0."""
    n = counts.sum().item()
    expected = probs.double() * n
    keep = expected > 0
    return (((counts.double() - expected) ** 2)[keep] / expected[keep]).sum().item()


@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.5, 0), (2.0, 0), (1.0, 3)])
def test_sample_next_token_draws_softmax_of_logits(temperature, top_k):
    # p(last) ~ 2e-3: a rare token must come up at its own rate, not be rounded away
    logits = torch.tensor([float("-inf"), 1.0, -1.0, 2.0, 0.3, -4.0, float("-inf")])
    scaled = logits / temperature
    if top_k:
        scaled = scaled.masked_fill(scaled < torch.topk(scaled, top_k).values[-1], float("-inf"))
    probs = torch.softmax(scaled, -1)
    n = 200_000
    tokens = ru.sample_next_token(logits.expand(n, -1), temperature, top_k, torch.Generator().manual_seed(0))
    counts = torch.bincount(tokens, minlength=len(logits))
    assert counts[probs == 0].sum() == 0, counts  # impossible tokens never come up (first, last, below top_k)
    # 5 free categories (fewer with top_k): P(chi2 > 25) < 2e-4
    assert chi_square(counts, probs) < 25, (counts / n, probs)


def test_sample_next_token_is_reproducible_and_per_row():
    logits = torch.randn(64, 50)
    a = ru.sample_next_token(logits, generator=torch.Generator().manual_seed(3))
    b = ru.sample_next_token(logits, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # a row whose distribution is one token always gives that token
    sure = torch.full((4, 50), -30.0)
    sure[torch.arange(4), torch.tensor([0, 7, 48, 49])] = 30.0
    assert ru.sample_next_token(sure, generator=torch.Generator().manual_seed(0)).tolist() == [0, 7, 48, 49]


def plain_generate(
    lm: nn.Module,
    prompts: list[list[int]],
    max_new_tokens: int,
    eos: int,
    pad: int,
    temperature: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampling without the KV cache or padding: every step runs each row alone, from its first token."""
    rows = [list(p) for p in prompts]
    finished = [False] * len(rows)
    tokens, masks = [], []
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = torch.stack([lm(input_ids=torch.tensor([row])).logits[0, -1] for row in rows])  # (B, V)
        sampled = ru.sample_next_token(logits, temperature, 0, generator).tolist()
        step_tokens, step_mask = [], []
        for b, token in enumerate(sampled):
            step_mask.append(0 if finished[b] else 1)
            step_tokens.append(pad if finished[b] else token)
            if not finished[b]:
                rows[b].append(token)
                finished[b] = token == eos
        tokens.append(step_tokens)
        masks.append(step_mask)
    return torch.tensor(tokens).T, torch.tensor(masks).T


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_kv_cache_generation_samples_what_plain_generation_samples(tiny_lm, tokenizer, temperature):
    """Same random numbers, same tokens: the cached, left-padded batch sees the same distributions."""
    eos = pad = tokenizer.eos_token_id
    lm = with_eos_bias(tiny_lm, math.log(60.0), eos)  # some rows end early
    prompt_ids, prompt_mask = ru.pad_batch(PROMPTS * 2, pad, side="left")
    responses, response_mask = ru.generate(
        lm, prompt_ids, prompt_mask, 10, eos, pad, temperature=temperature, generator=torch.Generator().manual_seed(5)
    )
    plain_responses, plain_mask = plain_generate(
        lm, PROMPTS * 2, 10, eos, pad, temperature, torch.Generator().manual_seed(5)
    )
    width = responses.shape[1]  # generate may stop early once every row has finished
    assert torch.equal(responses, plain_responses[:, :width]) and torch.equal(response_mask, plain_mask[:, :width])
    assert not plain_mask[:, width:].any()
    lengths = response_mask.sum(1)
    assert (lengths < 10).any() and (lengths > 1).any()  # the comparison covers early EOS and long rows


# ---------------------------------------------------------------------------
# Log-prob passes: one shared-trunk pass with logits only at the response vs the plain passes


def rollout(policy: ru.PolicyWithValueHead, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Left-padded prompts + sampled responses (some ended early): (input_ids, attention_mask, response_start)."""
    eos = policy.lm.config.eos_token_id
    prompt_ids, prompt_mask = ru.pad_batch(PROMPTS, eos, side="left")
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
    prompt_ids, prompt_mask = ru.pad_batch(PROMPTS, 0, side="left")  # (B, P), rows padded 0-5 tokens
    positions = ru.positions_from_mask(prompt_mask)
    mask_4d = ru.attention_mask_4d(tiny_lm, prompt_mask)
    assert mask_4d.shape == (len(PROMPTS), 1, prompt_ids.shape[1], prompt_ids.shape[1]) and mask_4d.dtype == torch.bool
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
    prompt_ids, prompt_mask = ru.pad_batch(PROMPTS, eos, side="left")
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
        logprobs, values, _ = ru.policy_forward(policy, input_ids, attention_mask, start, with_entropy=False)
        pg_loss, pg_stats = ru.ppo_policy_loss(logprobs, old_logprobs, advantages, mask, 0.2)
        vf_loss, vf_stats = ru.ppo_value_loss(values, old_values, returns, mask, 0.2)
        ru.optimizer_step(pg_loss + 0.1 * vf_loss, optimizer, scaler, policy.parameters(), 1.0)

    minibatch_step()  # the optimiser's state is created on the first step
    assert host_syncs(minibatch_step) == []
    # the check is real: reading a loss back is caught
    assert host_syncs(lambda: ru.masked_mean(old_logprobs, mask).item()) != []


# ---------------------------------------------------------------------------
# Fused GELU and fused AdamW


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


def test_make_optimizer_is_plain_adamw_with_decay_on_matrices():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 4))
    twin = copy.deepcopy(model)
    fast = ru.make_optimizer(model, lr=1e-2, weight_decay=0.1)
    if tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 4):
        assert fast.defaults["fused"] is True  # the fused kernel runs on CPU too
    matrices = [p for p in twin.parameters() if p.ndim >= 2]
    others = [p for p in twin.parameters() if p.ndim < 2]
    plain = torch.optim.AdamW(
        [{"params": matrices, "weight_decay": 0.1}, {"params": others, "weight_decay": 0.0}],
        lr=1e-2,
        eps=1e-8,
        foreach=False,
    )
    for _ in range(6):
        x = torch.randn(32, 8)
        for m, opt in ((model, fast), (twin, plain)):
            m(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0)
    assert any(
        (p - q).abs().max() > 0
        for p, q in zip(
            model.parameters(),
            nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 4)).parameters(),
        )
    )


# ---------------------------------------------------------------------------
# The benchmark itself


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
        assert all(seconds[k] > 0 for k in ("generation", "scoring", "optimisation"))
        assert seconds["total"] == pytest.approx(seconds["generation"] + seconds["scoring"] + seconds["optimisation"])
        assert result["episodes_per_second"] == pytest.approx(8 / seconds["total"])
        assert result["mfu_optimisation"] is None  # CPU
        assert (
            "resident set" in result["peak_memory_kind"] and result["peak_memory_gib"] > 0.05
        )  # torch alone takes more
        assert set(result["phase_peak_above_start_gib"]) == {"generation", "scoring", "optimisation"}
        assert math.isfinite(result["last_stats"]["loss"])


def test_the_benchmarks_cpu_memory_peak_sees_a_temporary_tensor():
    cpu = torch.device("cpu")
    if not ppo_bench.reset_peak_memory(cpu):
        pytest.skip("this kernel does not let a process reset its peak RSS (/proc/self/clear_refs)")
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
