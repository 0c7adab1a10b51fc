"""PPO benchmark: seconds per iteration of 3-RLHF.ipynb's PPO loop, split by phase.

Builds a GPT-2-shaped policy (with its shared-trunk value head), a frozen reference and a reward
model with random weights (no hub needed: the shapes set the cost, not the weights), runs PPO
iterations on random prompts, and prints one table per mode.

    python benchmarks/ppo_bench.py --size tiny --device cpu --threads 2 --compare
    python benchmarks/ppo_bench.py --size gpt2 --device cuda --json benchmarks/results/gpt2_cuda.json

--mode fast runs one iteration of 3-RLHF.ipynb's own loop cell (tagged "ppo-loop"), executed as the notebook runs
it; each phase is timed from the cell's lap that ends the phase before it (RunTracker.lap, by the loop's own phase
names), and it writes no checkpoint:
  generate   (1) sample one response per prompt with the KV cache            ru.generate
  score      (2) reward-model scores, normalised, minus the missing-EOS penalty; (3) one no-grad
             pass of the policy (log-probs, values, entropy) and one of the reference; (4) the
             KL-shaped rewards; (5) GAE and whitened advantages         ru.score_responses, ru.policy_forward,
                                                                        ru.response_logprobs, ru.compute_gae ...
  optimise   (6) ppo_epochs x (batch / minibatch) steps of the clipped policy loss + vf_coef x the
             clipped value loss, clipped gradients                      ru.ppo_policy_loss, ru.optimizer_step ...

--mode plain runs the same algorithm the way a first implementation would write it (PLAIN_DIFFERENCES
lists every difference); --compare runs both, interleaving their iterations, and prints the ratio.
Timings on a shared machine: other jobs skew them (the load average is printed), and two PyTorch
threads on two busy cores wait for each other (10x slower); measure on an idle machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights: nothing comes from the hub
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import rlhf_utils as ru  # noqa: E402
from rlhf_support.errors import ConfigError  # noqa: E402
from rlhf_support.loop import PHASES, RunTracker  # noqa: E402
from rlhf_support.notebook_cells import run_tagged_cell  # noqa: E402

NOTEBOOK = Path(__file__).resolve().parents[1] / "3-RLHF.ipynb"

# GPT2Config sizes. Dropout is off, as in PPO (the rollout and the update must see the same policy).
MODEL_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(n_layer=2, n_embd=64, n_head=2, vocab_size=1024, n_positions=64),
    "gpt2": dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024),
    "gpt2-medium": dict(n_layer=24, n_embd=1024, n_head=16, vocab_size=50257, n_positions=1024),
}
# Shapes used when a flag is not given: the smoke-sized CPU case, and PPOConfig's full profile.
SHAPE_DEFAULTS: dict[str, dict[str, int]] = {
    "tiny": dict(batch_size=64, prompt_min=2, prompt_max=8, response_length=16, minibatch_size=16),
    "gpt2": dict(batch_size=256, prompt_min=8, prompt_max=8, response_length=24, minibatch_size=64),
    "gpt2-medium": dict(batch_size=256, prompt_min=8, prompt_max=8, response_length=24, minibatch_size=64),
}
# Dense (no sparsity) tensor-core peak in FLOP/s, by a substring of the CUDA device name, first match
# wins. bf16, except the T4, which has no bf16: its fp16 peak. Unknown devices get no MFU.
PEAK_FLOPS: list[tuple[str, float, str]] = [
    ("H200", 989e12, "bf16"),
    ("H100 PCIe", 756e12, "bf16"),
    ("H100", 989e12, "bf16"),
    ("A100", 312e12, "bf16"),
    ("T4", 65e12, "fp16"),
]
PLAIN_DIFFERENCES = [
    "models: as transformers builds them (GPT-2's GELU as eight elementwise ops; rlhf_utils' loaders fuse it)",
    "generate: Hugging Face `lm.generate(do_sample=True, top_k=0)` (KV cache, batched, torch.multinomial) instead "
    "of ru.generate, and the response mask built by a Python loop over the samples (first EOS of each row)",
    "log-prob passes: the policy's logits and its values from two trunk passes, logits at every position, a full "
    "log_softmax, the entropy in every pass, and 2D attention masks, whose values transformers reads (a device "
    "sync per pass) (the fast path: one trunk pass, the LM head on the response positions only, no entropy in "
    "the minibatch passes, 4D masks); the reward model's pass is the same in both",
    "optimise: torch.optim.AdamW without the fused kernel, and each minibatch's statistics read back "
    "with .tolist() (a device sync per minibatch; the fast path reads them once per iteration)",
    "precision: fp32 everywhere (the fast path follows --precision: bf16 autocast on GPUs that have it)",
]


def cpu_name() -> str:
    """The CPU's model name (Linux), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} CPU ({os.cpu_count()} cores)"


def peak_flops(device: torch.device) -> tuple[float | None, str]:
    """(peak dense FLOP/s, its dtype) of a known CUDA GPU; (None, '') on CPU or an unknown GPU."""
    if device.type != "cuda":
        return None, ""
    name = torch.cuda.get_device_name(device)
    for key, flops, dtype in PEAK_FLOPS:
        if key in name:
            return flops, dtype
    return None, ""


def _status_bytes(field: str) -> int | None:
    """A memory figure of this process from /proc/self/status (Linux), in bytes; None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def memory_now(device: torch.device) -> int | None:
    """Bytes in use now: tensors on the GPU (after the queued work), or this process's resident set (RSS) on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.memory_allocated(device)
    return _status_bytes("VmRSS")


def reset_peak_memory(device: torch.device) -> bool:
    """Start a new peak: PyTorch's counter on a GPU; on Linux, the kernel's resident-set high-water mark."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def peak_memory(device: torch.device) -> int | None:
    """The peak since `reset_peak_memory`: PyTorch's allocated peak on a GPU, VmHWM (peak RSS) on Linux."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    return _status_bytes("VmHWM")


class PhaseClock:
    """Wall-clock seconds and peak memory per phase; synchronises the device before every reading.

    Memory: the peak during the phase above what was in use when it began (GPU: tensors; CPU: RSS, which
    also counts memory the allocator keeps for reuse, so it is an upper estimate of the tensors' peak).
    """

    def __init__(self, device: torch.device):
        self.device, self.seconds, self.peak_above_start, self.phase, self.start = device, {}, {}, None, 0.0
        self.start_memory: int | None = None
        self.peak_absolute = 0  # the highest peak_memory reading of any phase

    def begin(self, phase: str | None) -> None:
        """End the running phase (if any) and start `phase` (None: stop)."""
        now = ru.device_clock(self.device)  # waits for the GPU's queued work first
        if self.phase is not None:
            self.seconds[self.phase] = self.seconds.get(self.phase, 0.0) + now - self.start
            peak = peak_memory(self.device)
            if peak is not None and self.start_memory is not None:
                self.peak_above_start[self.phase] = max(
                    self.peak_above_start.get(self.phase, 0), peak - self.start_memory
                )
                self.peak_absolute = max(self.peak_absolute, peak)
        if phase is not None:
            self.start_memory = memory_now(self.device) if reset_peak_memory(self.device) else None
        self.phase, self.start = phase, ru.device_clock(self.device)


@dataclass
class Shapes:
    """The workload of one iteration."""

    batch_size: int
    prompt_min: int
    prompt_max: int
    response_length: int
    ppo_epochs: int
    minibatch_size: int


def ppo_config(shapes: Shapes) -> ru.PPOConfig:
    """The notebook's PPO hyperparameters (PPOConfig's defaults: the full profile) with these shapes."""
    return ru.PPOConfig(
        batch_size=shapes.batch_size,
        minibatch_size=shapes.minibatch_size,
        ppo_epochs=shapes.ppo_epochs,
        response_length=shapes.response_length,
    )


def build_models(
    size: str, device: torch.device, seed: int = 0, as_loaded: bool = True
) -> tuple[ru.PolicyWithValueHead, torch.nn.Module, ru.ScalarHeadModel]:
    """Random-weight policy (LM + value head), frozen reference copy, and reward model (trunk + scalar head).

    as_loaded: prepared as rlhf_utils' loaders prepare a checkpoint (`ru.use_fused_gelu`); else as
    transformers builds them.
    """
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

    sizes = MODEL_SIZES[size]
    config = GPT2Config(
        **sizes,
        bos_token_id=sizes["vocab_size"] - 1,
        eos_token_id=sizes["vocab_size"] - 1,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    prepare = ru.use_fused_gelu if as_loaded else (lambda model: model)
    torch.manual_seed(seed)
    policy = ru.PolicyWithValueHead(prepare(GPT2LMHeadModel(config))).to(device)
    ref_policy = prepare(GPT2LMHeadModel(config)).to(device).eval().requires_grad_(False)
    ref_policy.load_state_dict(policy.lm.state_dict())
    reward_model = ru.ScalarHeadModel(prepare(GPT2Model(config))).to(device).eval().requires_grad_(False)
    return policy, ref_policy, reward_model


def random_prompts(
    shapes: Shapes, vocab_size: int, pad_id: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded random prompts of random length in [prompt_min, prompt_max]: (ids, mask), (B, P)."""
    lengths = torch.randint(shapes.prompt_min, shapes.prompt_max + 1, (shapes.batch_size,), generator=generator)
    rows = [torch.randint(0, vocab_size - 1, (int(n),), generator=generator).tolist() for n in lengths]
    return ru.pad_batch(rows, pad_id, side="left")


class RolloutDone(Exception):
    """Raised at the end of the rollout (--only-rollout): the iteration stops before its PPO epochs."""


class BenchTracker(RunTracker):
    """The notebook's RunTracker, with the benchmark's phase clock: each phase of PHASES starts where the cell's lap
    ends the one before it (the first, where the iteration starts), named as the loop names it; nothing is due."""

    def __init__(self, *args: Any, phase_clock: PhaseClock, only_rollout: bool, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.phase_clock, self.only_rollout = phase_clock, only_rollout

    def iterations(self) -> Iterator[int]:
        """The tracker's iterations, the phase clock starting the first phase as each begins."""
        for iteration in super().iterations():
            self.begin(PHASES[0])
            yield iteration

    def lap(self, phase: str) -> None:
        """The end of `phase` (RunTracker.lap), and the start of the next one on the phase clock."""
        super().lap(phase)
        following = PHASES[PHASES.index(phase) + 1 :]
        self.begin(following[0] if following else None)

    def begin(self, phase: str | None) -> None:
        """Start timing `phase` (None: the iteration's phases are over); --only-rollout stops before "optimise"."""
        if self.only_rollout and phase == "optimise":
            raise RolloutDone
        self.phase_clock.begin(phase)

    def checkpoint_due(self, iteration: int) -> bool:
        """Never: a benchmark writes no checkpoint."""
        return False


class LoopHooks:
    """`ru` as the notebook's loop cell sees it in the benchmark: the same module, except that its RunTracker times
    the phases (BenchTracker) and the rollout's passes may run in other chunks (--rollout-chunk)."""

    def __init__(self, only_rollout: bool, rollout_chunk: int | None):
        self.only_rollout, self.rollout_chunk, self.clock = only_rollout, rollout_chunk, None

    def __getattr__(self, name: str) -> Any:
        return getattr(ru, name)

    def RunTracker(self, *args: Any, **kwargs: Any) -> BenchTracker:  # noqa: N802  (ru.RunTracker, as the cell spells it)
        """The notebook's RunTracker, timing the phases on this iteration's PhaseClock and never due to save."""
        return BenchTracker(*args, phase_clock=self.clock, only_rollout=self.only_rollout, **kwargs)

    def _chunk(self, chunk_size: int | None) -> int | None:
        """--rollout-chunk N: the no-grad passes in chunks of N rows (0: the whole batch) instead of the cell's."""
        return chunk_size if chunk_size is None or self.rollout_chunk is None else (self.rollout_chunk or None)

    def policy_forward(self, *args: Any, **kwargs: Any) -> Any:
        bound = inspect.signature(ru.policy_forward).bind(*args, **kwargs).arguments
        return ru.policy_forward(**{**bound, "chunk_size": self._chunk(bound.get("chunk_size"))})

    def response_logprobs(self, *args: Any, **kwargs: Any) -> Any:
        bound = inspect.signature(ru.response_logprobs).bind(*args, **kwargs).arguments
        return ru.response_logprobs(**{**bound, "chunk_size": self._chunk(bound.get("chunk_size"))})


class PPOBench:
    """One PPO setup (models, optimiser, KL controller) and its iteration, fast or plain."""

    def __init__(
        self,
        size: str,
        shapes: Shapes,
        device: torch.device,
        precision: ru.Precision,
        mode: str,
        seed: int = 0,
        rollout_chunk: int | None = None,
        only_rollout: bool = False,
    ):
        self.size, self.shapes, self.device, self.mode = size, shapes, device, mode
        self.only_rollout = only_rollout
        self.precision = precision if mode == "fast" else ru.Precision(device, None, False)
        self.cfg = ppo_config(shapes)
        self.policy, self.ref_policy, self.reward_model = build_models(size, device, seed, as_loaded=(mode == "fast"))
        self.eos_id = self.pad_id = self.policy.lm.config.eos_token_id
        self.vocab_size = self.policy.lm.config.vocab_size
        if mode == "fast":
            self.optimizer = ru.make_optimizer(self.policy, self.cfg.learning_rate)
        else:  # what torch.optim.AdamW does by default: no fused kernel
            self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=self.cfg.learning_rate, fused=False)
        self.scaler = self.precision.grad_scaler()
        self.kl_ctl = ru.AdaptiveKLController(self.cfg.init_kl_coef, self.cfg.kl_target, self.cfg.kl_horizon)
        self.score_mean, self.score_std = 0.0, 1.0  # saved beside a trained reward model; identity here
        self.generator = torch.Generator(device).manual_seed(seed)
        self.prompt_generator = torch.Generator().manual_seed(seed + 1)
        self.hooks, self.namespace, self.done = LoopHooks(only_rollout, rollout_chunk), None, 0
        if mode == "fast":  # the variables the notebook's earlier cells define, for its loop cell
            prompt_rows = [
                random_prompts(shapes, self.vocab_size, self.pad_id, self.prompt_generator) for _ in range(8)
            ]
            self.namespace = dict(
                ru=self.hooks, torch=torch, time=time, display=lambda *args, **kwargs: None, device=device,
                precision=self.precision, policy=self.policy, ref_policy=self.ref_policy, reward_model=self.reward_model,
                tokenizer=argparse.Namespace(pad_token_id=self.pad_id, eos_token_id=self.eos_id),
                train_prompts=[row[mask.bool()].tolist() for ids, masks in prompt_rows for row, mask in zip(ids, masks)],
                score_mean=self.score_mean, score_std=self.score_std, reward_threshold=0.0, optimizer=self.optimizer,
                scaler=self.scaler, kl_controller=self.kl_ctl, generator=self.generator, history=ru.History(),
                run_signature={}, pieces=ru.ppo_pieces(self.cfg, device, self.precision), measure_curve=dict,
            )  # fmt: skip

    def prompts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A fresh batch of random prompts on the device."""
        ids, mask = random_prompts(self.shapes, self.vocab_size, self.pad_id, self.prompt_generator)
        return ids.to(self.device), mask.to(self.device)

    # --- the phases, plain: what differs from the notebook's calls (PLAIN_DIFFERENCES) -----------

    def generate_plain(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hugging Face generate, then a per-sample loop that masks everything after the first EOS."""
        out = self.policy.lm.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            do_sample=True,
            top_k=0,
            temperature=self.cfg.temperature,
            max_new_tokens=self.cfg.response_length,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
        )
        responses = out[:, prompt_ids.shape[1] :]
        response_mask = torch.zeros_like(responses)
        for i in range(responses.shape[0]):
            eos = (responses[i] == self.eos_id).nonzero()
            end = int(eos[0]) + 1 if len(eos) else responses.shape[1]
            response_mask[i, :end] = 1
        return responses, response_mask

    def policy_forward_plain(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_start: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ru.policy_forward's results from two trunk passes (logits, then values) and a full log_softmax."""
        position_ids = ru.positions_from_mask(attention_mask)
        logits = self.policy.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        logits = logits[:, response_start - 1 : -1] / self.cfg.temperature  # (B, R, V)
        logp = torch.log_softmax(logits, dim=-1)  # (B, R, V)
        logprobs = logp.gather(-1, input_ids[:, response_start:, None]).squeeze(-1)  # (B, R)
        with torch.no_grad():
            entropy = -(torch.softmax(logits, dim=-1) * logp).sum(-1)  # (B, R)
        hidden = self.policy.lm.transformer(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state  # (B, T, H)
        values = self.policy.value_head(hidden)[:, response_start - 1 : -1]  # (B, R)
        return logprobs, values, entropy

    def ref_logprobs_plain(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_start: int
    ) -> torch.Tensor:
        """ru.response_logprobs's result from a full log_softmax."""
        logits = self.ref_policy(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=ru.positions_from_mask(attention_mask)
        ).logits
        logp = torch.log_softmax(logits[:, response_start - 1 : -1] / self.cfg.temperature, dim=-1)  # (B, R, V)
        return logp.gather(-1, input_ids[:, response_start:, None]).squeeze(-1)  # (B, R)

    # --- one iteration ----------------------------------------------------------------------

    def iteration(self, clock: PhaseClock) -> dict[str, float]:
        """One PPO iteration, timed by phase; returns its statistics. Fast: the notebook's own loop cell."""
        if self.mode == "fast":
            return self.notebook_iteration(clock)
        return self.plain_iteration(clock)

    def notebook_iteration(self, clock: PhaseClock) -> dict[str, float]:
        """One iteration of 3-RLHF.ipynb's loop cell, executed as it is."""
        ns, cfg = self.namespace, self.cfg
        self.hooks.clock = clock
        ns.update(
            cfg=dataclasses.replace(cfg, num_iterations=self.done + 1, curve_prompts=0, samples_every=10**9),
            start_iteration=self.done,
        )
        try:
            run_tagged_cell(NOTEBOOK, "ppo-loop", ns)
        except RolloutDone:  # --only-rollout: stopped before the PPO epochs, which take no time then
            clock.begin("optimise")
            clock.begin(None)
            kl = ns["kl"].sum(1).mean().item()
            return {"kl": kl, "score": ns["scores"].mean().item(),
                    "generated_tokens": ns["response_mask"].sum().item(), "loss": 0.0, "update_tokens": 0}  # fmt: skip
        finally:
            if ns.get("tracker") is not None and ns["tracker"].bar is not None:
                ns["tracker"].bar.close()  # --only-rollout leaves the loop, and its progress bar, half way
        self.done += 1
        last = ns["history"].rows[-1]
        return {
            "kl": last["objective/kl"],
            "score": last["env/score_mean"],
            "generated_tokens": last["env/response_length"] * cfg.batch_size,
            "loss": last["loss/policy"] + cfg.vf_coef * last["loss/value"],
            "update_tokens": cfg.ppo_epochs * cfg.batch_size * ns["input_ids"].shape[1],
        }

    def plain_iteration(self, clock: PhaseClock) -> dict[str, float]:
        """One PPO iteration written the plain way (PLAIN_DIFFERENCES), timed by phase; returns its statistics.

        The same steps as the notebook's loop; only how each step is computed differs."""
        cfg = self.cfg
        prompt_ids, prompt_mask = self.prompts()  # (B, P)
        response_start = prompt_ids.shape[1]
        self.policy.eval()  # dropout off, as in the notebook: the rollout and the update see the same policy

        # (1) Sample one response per prompt
        clock.begin("generate")
        with torch.no_grad():
            responses, response_mask = self.generate_plain(prompt_ids, prompt_mask)
        query_responses = torch.cat([prompt_ids, responses], 1)  # (B, P + R)
        attention_mask = torch.cat([prompt_mask, response_mask], 1)  # (B, P + R)

        # (2) Score, normalise, penalise a missing EOS; (3) log-probs and values of policy and reference
        clock.begin("score")
        with torch.no_grad():
            raw_scores = ru.score_responses(self.reward_model, prompt_ids, prompt_mask, responses, response_mask)
            scores = (raw_scores - self.score_mean) / self.score_std  # (B,)
            has_eos = ru.ends_with_eos(responses, response_mask, self.eos_id)  # (B,)
            scores = scores - cfg.missing_eos_penalty * (~has_eos).float()
            logprobs, values, entropy = self.policy_forward_plain(query_responses, attention_mask, response_start)
            ref_logprobs = self.ref_logprobs_plain(query_responses, attention_mask, response_start)
        # (4) KL-shaped rewards; (5) GAE and whitened advantages
        rewards, kl = ru.compute_rewards(scores, logprobs, ref_logprobs, response_mask, self.kl_ctl.value)  # (B, R)
        advantages, returns = ru.compute_gae(values, rewards, response_mask, cfg.gamma, cfg.lam)  # (B, R)
        if cfg.whiten_advantages:
            advantages = ru.masked_whiten(advantages, response_mask)

        # (6) PPO epochs over shuffled minibatches, each minibatch's statistics read back at once
        clock.begin("optimise")
        mb_stats = []
        for _ in range(0 if self.only_rollout else cfg.ppo_epochs):
            order = torch.randperm(cfg.batch_size, generator=self.generator, device=self.device)
            for mb_start in range(0, cfg.batch_size, cfg.minibatch_size):
                mb = order[mb_start : mb_start + cfg.minibatch_size]
                mb_mask = response_mask[mb]
                mb_logprobs, mb_values, _ = self.policy_forward_plain(
                    query_responses[mb], attention_mask[mb], response_start
                )
                pg_loss, _ = ru.ppo_policy_loss(mb_logprobs, logprobs[mb], advantages[mb], mb_mask, cfg.clip_range)
                vf_loss, _ = ru.ppo_value_loss(mb_values, values[mb], returns[mb], mb_mask, cfg.clip_range_value)
                ru.optimizer_step(
                    pg_loss + cfg.vf_coef * vf_loss,
                    self.optimizer,
                    self.scaler,
                    self.policy.parameters(),
                    cfg.max_grad_norm,
                )
                mb_stats.append([pg_loss.item(), vf_loss.item()])  # a read-back (device sync) per minibatch

        # (7) Statistics, and the KL coefficient's update
        kl_per_sequence = kl.sum(1).mean().item()
        policy_loss, value_loss = torch.tensor(mb_stats).mean(0).tolist() if mb_stats else (0.0, 0.0)
        ru.stop_if_diverged("PPO benchmark", 0, policy_loss=policy_loss, value_loss=value_loss, kl=kl_per_sequence)
        self.kl_ctl.update(kl_per_sequence, cfg.batch_size)
        clock.begin(None)
        return {
            "kl": kl_per_sequence,
            "score": scores.mean().item(),
            "generated_tokens": response_mask.sum().item(),
            "loss": policy_loss + cfg.vf_coef * value_loss,
            "update_tokens": cfg.ppo_epochs * cfg.batch_size * query_responses.shape[1],
        }


def run_modes(
    modes: list[str], args: argparse.Namespace, shapes: Shapes, device: torch.device, precision: ru.Precision
) -> dict[str, dict[str, Any]]:
    """Build and warm up each mode, then time their iterations interleaved (same machine conditions)."""
    benches, resident = {}, {}
    for mode in modes:
        before = memory_now(device)
        benches[mode] = PPOBench(
            args.size,
            shapes,
            device,
            precision,
            mode,
            seed=args.seed,
            rollout_chunk=args.rollout_chunk,
            only_rollout=args.only_rollout,
        )
        for _ in range(args.warmup):
            benches[mode].iteration(PhaseClock(device))
        after = memory_now(device)
        resident[mode] = after - before if None not in (before, after) else None  # models, optimiser: its own
    records: dict[str, list] = {mode: [] for mode in modes}
    for _ in range(args.iterations):
        for mode in modes:
            clock = PhaseClock(device)
            stats = benches[mode].iteration(clock)
            # GPU: this mode's own peak, its resident memory plus the most any phase added on top of everything.
            # CPU: the process's peak RSS (an allocator keeps freed memory, so per-mode residents would not add up;
            # with --compare it holds both modes' models)
            transient = max(clock.peak_above_start.values(), default=None)
            if device.type == "cuda":
                peak = resident[mode] + transient if None not in (resident[mode], transient) else None
            else:
                peak = clock.peak_absolute or None
            records[mode].append((clock.seconds, stats, peak, dict(clock.peak_above_start)))
    return {mode: summarize(mode, benches[mode], records[mode], device) for mode in modes}


def summarize(mode: str, bench: PPOBench, records: list, device: torch.device) -> dict[str, Any]:
    """The figures of the table from one mode's timed iterations (means over iterations)."""
    phases = list(PHASES)
    seconds = {p: statistics.mean(r[0][p] for r in records) for p in phases}
    seconds["total"] = sum(seconds[p] for p in phases)
    tokens = statistics.mean(r[1]["generated_tokens"] for r in records)
    n_params = ru.count_parameters(bench.policy)
    # model FLOPs of the update: 6 x parameters x tokens (2 forward + 4 backward per parameter and token),
    # counting every position of [prompt | response] and the LM head everywhere, attention scores aside
    update_flops = 6 * n_params * statistics.mean(r[1]["update_tokens"] for r in records)
    peak, peak_dtype = peak_flops(device)
    return {
        "mode": mode,
        "precision": bench.precision.name,
        "seconds_per_iteration": seconds,
        "median_total_seconds": statistics.median(sum(r[0][p] for p in phases) for r in records),
        "episodes_per_second": bench.shapes.batch_size / seconds["total"],
        "generated_tokens_per_second": tokens / seconds["generate"],
        "peak_memory_gib": max(r[2] for r in records) / 2**30 if records[0][2] is not None else None,
        "peak_memory_kind": (
            "GPU tensors (max_memory_allocated), this mode's own"
            if device.type == "cuda"
            else "the process's peak resident set (VmHWM)"
        ),
        "phase_peak_above_start_gib": {p: max(r[3].get(p, 0) for r in records) / 2**30 for p in phases}
        if records[0][3]
        else None,
        "optimise_flops": update_flops,
        "mfu_optimise": update_flops / seconds["optimise"] / peak if peak else None,
        "peak_flops": peak,
        "peak_flops_dtype": peak_dtype,
        "policy_parameters": n_params,
        "last_stats": records[-1][1],
    }


def format_table(result: dict[str, Any]) -> str:
    """The result as a text table."""
    s = result["seconds_per_iteration"]
    rows = [
        ("generate", f"{s['generate']:.4f}"),
        ("score (and the log-prob passes)", f"{s['score']:.4f}"),
        ("optimise", f"{s['optimise']:.4f}"),
        ("total", f"{s['total']:.4f}"),
        ("episodes / s", f"{result['episodes_per_second']:.1f}"),
        ("generated tokens / s (generate phase)", f"{result['generated_tokens_per_second']:.0f}"),
        (
            "peak memory, " + ("GPU" if result["peak_memory_kind"].startswith("GPU") else "process RSS"),
            "n/a" if result["peak_memory_gib"] is None else f"{result['peak_memory_gib']:.2f} GiB",
        ),
        *[
            (f"  added by {phase}", f"{gib:.3f} GiB")
            for phase, gib in (result["phase_peak_above_start_gib"] or {}).items()
        ],
        (
            "MFU of the optimise phase",
            "n/a"
            if result["mfu_optimise"] is None
            else f"{100 * result['mfu_optimise']:.1f}% of {result['peak_flops'] / 1e12:.0f} TFLOP/s {result['peak_flops_dtype']}",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'phase':<{width}} | s/iter", f"{'-' * width}-|-------"]
    for i, (name, value) in enumerate(rows):
        if i == 4:
            lines.append(f"{'-' * width}-|-------")
        lines.append(f"{name:<{width}} | {value}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    by_size = "; default by --size: " + ", ".join(f"{k} {{{k}}}" for k in SHAPE_DEFAULTS)
    for flag, key, what in [
        ("--batch-size", "batch_size", "episodes per iteration"),
        ("--prompt-min", "prompt_min", "shortest prompt, in tokens"),
        ("--prompt-max", "prompt_max", "longest prompt, in tokens"),
        ("--response-length", "response_length", "most new tokens per response"),
        ("--minibatch-size", "minibatch_size", "episodes per gradient step"),
    ]:
        parser.add_argument(
            flag, type=int, help=what + by_size.format(**{k: v[key] for k, v in SHAPE_DEFAULTS.items()})
        )
    parser.add_argument(
        "--size",
        choices=list(MODEL_SIZES),
        default="tiny",
        help="model shape, random weights: tiny (2 layers, 64 wide, 1024 tokens), gpt2 (124M), "
        "gpt2-medium (355M); default tiny",
    )
    parser.add_argument("--ppo-epochs", type=int, default=4, help="passes over each batch; default 4")
    parser.add_argument("--iterations", type=int, default=5, help="timed iterations per mode; default 5")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first, per mode; default 1")
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="default auto (CUDA if present)"
    )
    parser.add_argument("--threads", type=int, default=0, help="PyTorch CPU threads; default 0: PyTorch's choice")
    parser.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp16", "fp32"],
        default="auto",
        help="of the fast path; auto (default): bf16 on GPUs that have it, fp16 on older ones, fp32 on CPU",
    )
    parser.add_argument("--mode", choices=["fast", "plain"], default="fast", help="default fast")
    parser.add_argument("--compare", action="store_true", help="run plain and fast in this process and print the ratio")
    parser.add_argument(
        "--rollout-chunk",
        type=int,
        help="rows per no-gradient pass of the fast path's step (3); "
        "default: --minibatch-size, as the notebook; 0: the whole batch at once (the peak memory "
        "before chunking)",
    )
    parser.add_argument(
        "--only-rollout",
        action="store_true",
        help="steps (1)-(5) only, no PPO update: to measure "
        "the rollout's time and memory where a full iteration would take too long (a CPU at GPT-2 size)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    parser.add_argument("--seed", type=int, default=0, help="default 0")
    args = parser.parse_args(argv)
    for key, value in SHAPE_DEFAULTS[args.size].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not 1 <= args.prompt_min <= args.prompt_max:
        parser.error("need 1 <= --prompt-min <= --prompt-max")
    if args.batch_size % args.minibatch_size:
        parser.error(f"--batch-size {args.batch_size} must be a multiple of --minibatch-size {args.minibatch_size}")
    if args.prompt_max + args.response_length > MODEL_SIZES[args.size]["n_positions"]:
        parser.error(
            f"--prompt-max + --response-length exceeds the {MODEL_SIZES[args.size]['n_positions']} positions of {args.size}"
        )
    if args.rollout_chunk is not None and args.rollout_chunk < 0:
        parser.error("--rollout-chunk must be >= 0 (0: the whole batch)")
    if args.iterations < 1 or args.warmup < 0:
        parser.error("need --iterations >= 1 and --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but PyTorch sees no CUDA GPU: use --device cpu, or a CUDA build of PyTorch")
    try:  # PPOConfig checks the rest (batch >= 2, epochs >= 1, ...)
        ppo_config(
            Shapes(
                args.batch_size,
                args.prompt_min,
                args.prompt_max,
                args.response_length,
                args.ppo_epochs,
                args.minibatch_size,
            )
        )
    except ConfigError as error:
        parser.error(str(error))
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and print the table(s)."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = ru.resolve_device(args.device)
        precision = ru.resolve_precision(device, args.precision)
    except ru.RLHFError as error:
        raise SystemExit(f"error: {error}") from None
    shapes = Shapes(
        args.batch_size, args.prompt_min, args.prompt_max, args.response_length, args.ppo_epochs, args.minibatch_size
    )
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{cpu_name()}, {torch.get_num_threads()} threads"
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")  # other jobs on the machine skew timings
    print(
        f"PPO benchmark: {args.size}, batch {shapes.batch_size}, prompts {shapes.prompt_min}-{shapes.prompt_max} "
        f"tokens, {shapes.response_length} new tokens, {shapes.ppo_epochs} epochs x minibatch "
        f"{shapes.minibatch_size}; {where}; torch {torch.__version__}; {args.iterations} timed iterations "
        f"after {args.warmup} warm-up; load average {load:.2f}"
    )
    modes = ["plain", "fast"] if args.compare else [args.mode]
    results = run_modes(modes, args, shapes, device, precision)
    for mode, result in results.items():
        print(f"\n[{mode}, {result['precision']}]")
        print(format_table(result))
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "device": where,
        "torch": torch.__version__,
        "load_average_1min": load,
        "shapes": vars(shapes),
        "size": args.size,
        "only_rollout": args.only_rollout,
        "rollout_chunk": shapes.minibatch_size if args.rollout_chunk is None else args.rollout_chunk,
        "iterations": args.iterations,
        "warmup": args.warmup,
        "results": results,
    }
    if args.compare:
        ratio = results["plain"]["seconds_per_iteration"]["total"] / results["fast"]["seconds_per_iteration"]["total"]
        report["speedup_fast_over_plain"] = ratio
        print(f"\nfast is {ratio:.2f}x faster per iteration than plain. Plain differs in:")
        for line in PLAIN_DIFFERENCES:
            print(f"  - {line}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
