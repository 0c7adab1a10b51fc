"""Our GRPO beside TRL's GRPOTrainer, on one CPU, one workload, paired in one run.

    python benchmarks/grpo_vs_trl.py --dataset ../shared/data/sst2          # ~15 minutes on 2 cores

Both train the same tiny GPT-2 (the cpu profile's SFT model, or a random one of its shape with --models random),
score with the same reward model (ours, wrapped as a reward function for TRL), on the same prompts (the first 2-8
words of SST-2 training sentences), with the same group size (4 responses to each of 32 prompts: 128 episodes per
iteration), response length (24 tokens), epochs (4 passes, minibatches of 32), clip range (0.2), learning rate and
KL coefficient (0.12; ours puts it in the reward per token, TRL's `beta` in the loss: both compute the reference's
log-probs every iteration). Ours is notebook 3's own loop cell with advantage_estimator="grpo"; TRL's is GRPOTrainer
with loss_type="grpo", scale_rewards="group", num_iterations=4.

TRL is installed into a throwaway virtual environment (--venv, with this environment's own packages visible, so both
sides run the same torch and transformers); the series never imports it. Each side runs in its own process, one at a
time, with --threads threads; the two alternate --rounds times (warm-up iterations first), so a slow spell of a shared
machine falls on both. Reported per side: seconds per iteration by phase, episodes per second, peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRL_VERSION = "1.16.0"
SHAPE = dict(prompts=32, group=4, response_length=24, epochs=4, minibatch=32, clip=0.2, beta=0.12, lr=7.5e-5)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prompts_text(dataset: str | None, count: int, seed: int) -> list[str]:
    """The first 2-8 words of SST-2 training sentences (or of the smoke data's), as text."""
    import random

    import rlhf_utils as ru

    sentences = ru.load_sst2(dataset, require_label=False)["train"]["sentence"]
    rng = random.Random(seed)
    texts = []
    for sentence in rng.sample(list(sentences), min(len(sentences), 4 * count)):
        words = sentence.split()
        if len(words) >= 3:
            texts.append(" ".join(words[: min(rng.randint(2, 8), len(words) - 1)]))
    return texts[:count]


# ---------------------------------------------------------------------------------------------- ours


def run_ours(spec: dict[str, Any]) -> dict[str, Any]:
    """Notebook 3's loop cell with advantage_estimator="grpo", for warmup + iterations iterations."""
    import dataclasses

    import torch

    import rlhf_utils as ru
    from rlhf_support.notebook_cells import run_tagged_cell

    torch.set_num_threads(spec["threads"])
    cpu = torch.device("cpu")
    fp32 = ru.resolve_precision(cpu, "fp32")
    tokenizer = ru.load_tokenizer(spec["policy"], padding_side="left")
    policy = ru.PolicyWithValueHead(ru.load_causal_lm(spec["policy"], cpu)).eval()
    ref_policy = ru.load_causal_lm(spec["policy"], cpu).eval().requires_grad_(False)
    reward_model, _, info = ru.load_reward_model(spec["reward"], cpu)
    prompts = tokenizer(spec["prompts"], add_special_tokens=False)["input_ids"]
    cfg = ru.PPOConfig(
        advantage_estimator="grpo", samples_per_prompt=SHAPE["group"], batch_size=SHAPE["prompts"] * SHAPE["group"],
        minibatch_size=SHAPE["minibatch"], ppo_epochs=SHAPE["epochs"], response_length=SHAPE["response_length"],
        clip_range=SHAPE["clip"], init_kl_coef=SHAPE["beta"], adaptive_kl=False, learning_rate=SHAPE["lr"],
        require_cuda=False, curve_prompts=0, samples_every=10**9, checkpoint_dir="", seed=0,
    )  # fmt: skip
    namespace = dict(
        ru=ru, torch=torch, display=lambda *args, **kwargs: None, device=cpu, precision=fp32, tokenizer=tokenizer,
        train_prompts=prompts, policy=policy, ref_policy=ref_policy, reward_model=reward_model,
        score_mean=info["score_mean"], score_std=info["score_std"], reward_threshold=info["threshold"],
        optimizer=ru.make_optimizer(policy, cfg.learning_rate), scaler=fp32.grad_scaler(),
        kl_controller=ru.FixedKLController(cfg.init_kl_coef), generator=torch.Generator().manual_seed(0),
        history=ru.History(), run_signature={}, pieces=ru.ppo_pieces(cfg), measure_curve=dict,
    )  # fmt: skip
    total = spec["warmup"] + spec["iterations"]
    namespace.update(cfg=dataclasses.replace(cfg, num_iterations=total), start_iteration=0)
    run_tagged_cell(ROOT / "3-RLHF.ipynb", "ppo-loop", namespace)
    rows = namespace["history"].rows[spec["warmup"] :]
    phases = {phase: [row[f"time/{phase}_s"] for row in rows] for phase in ("generate", "score", "optimise")}
    return {"phases": phases, "peak_rss_mb": peak_rss_mb(), "score": [row["env/raw_score_mean"] for row in rows]}


# ---------------------------------------------------------------------------------------------- TRL


def run_trl(spec: dict[str, Any]) -> dict[str, Any]:
    """TRL's GRPOTrainer on the same models and settings (run with the --venv's Python, where trl is installed)."""
    import datasets
    import torch
    import trl
    from transformers import AutoModelForCausalLM, TrainerCallback

    import rlhf_utils as ru

    torch.set_num_threads(spec["threads"])
    cpu = torch.device("cpu")
    reward_model, reward_tokenizer, info = ru.load_reward_model(spec["reward"], cpu)
    clocks = {"generate": 0.0, "reward": 0.0}

    def reward(prompts, completions, **kwargs):  # noqa: ANN001, ANN003, ANN202  (TRL's reward-function signature)
        started = time.perf_counter()
        texts = [p + c for p, c in zip(prompts, completions)]
        raw = ru.score_sentences(reward_model, reward_tokenizer, texts, batch_size=len(texts))
        clocks["reward"] += time.perf_counter() - started
        return ((raw - info["score_mean"]) / info["score_std"]).tolist()

    model = AutoModelForCausalLM.from_pretrained(spec["policy"], dtype=torch.float32)
    generate = model.generate

    def timed_generate(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        started = time.perf_counter()
        out = generate(*args, **kwargs)
        clocks["generate"] += time.perf_counter() - started
        return out

    model.generate = timed_generate
    tokenizer = ru.load_tokenizer(spec["policy"], padding_side="left")
    steps_per_round = SHAPE["epochs"] * SHAPE["group"] * SHAPE["prompts"] // SHAPE["minibatch"]  # 16 optimizer steps
    rounds = spec["warmup"] + spec["iterations"]
    args = trl.GRPOConfig(
        output_dir=spec["scratch"], per_device_train_batch_size=SHAPE["minibatch"], gradient_accumulation_steps=1,
        steps_per_generation=SHAPE["group"] * SHAPE["prompts"] // SHAPE["minibatch"], num_generations=SHAPE["group"],
        num_iterations=SHAPE["epochs"], max_completion_length=SHAPE["response_length"], temperature=1.0, top_k=0,
        top_p=1.0, beta=SHAPE["beta"], epsilon=SHAPE["clip"], loss_type="grpo", scale_rewards="group",
        learning_rate=SHAPE["lr"], lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
        max_steps=rounds * steps_per_round, logging_steps=10**9, save_strategy="no", report_to=[], use_cpu=True,
        bf16=False, fp16=False, seed=0, dataloader_num_workers=0, disable_dropout=True,
    )  # fmt: skip
    finished: list[tuple[float, dict[str, float]]] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003, ANN202
            if state.global_step % steps_per_round == 0:  # one generation round: 128 episodes, 16 steps
                finished.append((time.perf_counter(), dict(clocks)))

    dataset = datasets.Dataset.from_dict({"prompt": spec["prompts"] * (rounds * SHAPE["group"] + 1)})
    trainer = trl.GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=dataset,
                              processing_class=tokenizer, callbacks=[Clock()])  # fmt: skip
    started = time.perf_counter()
    trainer.train()
    marks = [(started, {"generate": 0.0, "reward": 0.0})] + finished
    phases: dict[str, list[float]] = {"generate": [], "reward": [], "logprobs and update": []}
    for (t0, c0), (t1, c1) in list(zip(marks, marks[1:]))[spec["warmup"] :]:
        gen, rew = c1["generate"] - c0["generate"], c1["reward"] - c0["reward"]
        phases["generate"].append(gen)
        phases["reward"].append(rew)
        phases["logprobs and update"].append(t1 - t0 - gen - rew)
    return {"phases": phases, "peak_rss_mb": peak_rss_mb(), "trl": trl.__version__}


# ---------------------------------------------------------------------------------------------- the pairing


def ensure_venv(venv: Path) -> Path:
    """A virtual environment that sees this one's packages and adds TRL (pinned); returns its Python."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    probe = subprocess.run([str(python), "-c", "import trl; print(trl.__version__)"], capture_output=True, text=True)
    if probe.stdout.strip() != TRL_VERSION:
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", f"trl=={TRL_VERSION}"],
                       check=True)  # fmt: skip
    return python


def models(args: argparse.Namespace, scratch: Path) -> tuple[str, str]:
    """(policy folder, reward-model folder): the cpu profile's SFT and reward models, or random ones of their shape."""
    import rlhf_utils as ru

    if args.models == "trained":
        out = ROOT / ru.make_config(ru.PPOConfig, {"RLHF_PROFILE": "cpu"}).output_dir
        if (out / "sft_model").exists() and (out / "reward_model").exists():
            return str(out / "sft_model"), str(out / "reward_model")
        print(f"No trained cpu-profile models in {out}: random models of their shape instead.", flush=True)
    import torch

    from rlhf_support.profiles import build_base_model

    base = build_base_model(scratch / "base_model", args.dataset, "cpu", seed=0)
    reward = ru.build_reward_model(str(base))
    tokenizer = ru.load_tokenizer(str(base))
    torch.manual_seed(0)
    ru.save_reward_model(reward, tokenizer, scratch / "reward_model", 0.0, 1.0, 0.0, meta={"kind": "random"})
    return str(base), str(scratch / "reward_model")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=None, help="SST-2 folder (train and validation files)")
    parser.add_argument("--models", choices=("trained", "random"), default="trained")
    parser.add_argument("--iterations", type=int, default=5, help="timed iterations per side and round")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="times each side runs, alternating")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--venv", default="outputs/trl-venv")
    parser.add_argument("--json", default="benchmarks/results/grpo_vs_trl_cpu.json")
    parser.add_argument("--worker", choices=("ours", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(Path(args.spec).read_text())
        result = (run_ours if args.worker == "ours" else run_trl)(spec)
        print("RESULT " + json.dumps(result))
        return result
    python = ensure_venv(ROOT / args.venv)
    with tempfile.TemporaryDirectory() as scratch:
        policy, reward = models(args, Path(scratch))
        spec = {"policy": policy, "reward": reward, "prompts": prompts_text(args.dataset, SHAPE["prompts"] * 20, 0),
                "warmup": args.warmup, "iterations": args.iterations, "threads": args.threads,
                "scratch": str(Path(scratch) / "trl")}  # fmt: skip
        spec_path = Path(scratch) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        runs: dict[str, list[dict[str, Any]]] = {"ours": [], "trl": []}
        env = os.environ | {"OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
        for round_ in range(args.rounds):
            for side, exe in (("ours", sys.executable), ("trl", str(python))):
                started = time.perf_counter()
                done = subprocess.run([exe, __file__, "--worker", side, "--spec", str(spec_path)], env=env,
                                      capture_output=True, text=True)  # fmt: skip
                if done.returncode:
                    raise RuntimeError(f"{side} failed:\n{done.stderr[-3000:]}")
                line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
                runs[side].append(json.loads(line.removeprefix("RESULT ")) | {"wall_s": time.perf_counter() - started})
                print(f"round {round_ + 1}: {side} done in {runs[side][-1]['wall_s']:.0f} s", flush=True)
    episodes = SHAPE["prompts"] * SHAPE["group"]
    summary = {}
    for side, results in runs.items():
        per_iteration = [sum(values) for r in results for values in zip(*r["phases"].values())]
        summary[side] = {
            "seconds_per_iteration": statistics.median(per_iteration),
            "episodes_per_second": episodes / statistics.median(per_iteration),
            "phases_s": {p: statistics.median([v for r in results for v in r["phases"][p]]) for p in results[0]["phases"]},
            "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
        }  # fmt: skip
    summary["speedup"] = summary["ours"]["episodes_per_second"] / summary["trl"]["episodes_per_second"]
    result = {"summary": summary, "runs": runs, "shape": SHAPE, "trl": TRL_VERSION, "settings": vars(args),
              "machine": os.uname().machine, "cpu": _cpu_name(), "threads": args.threads}  # fmt: skip
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return result


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
