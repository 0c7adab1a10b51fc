"""Beyond PPO, measured: PPO (GAE and a value head) beside RLOO, GRPO, Dr. GRPO, REINFORCE++, offline and online DPO
and best-of-N, on one task with one SFT model, one reward model and one episode budget (--methods picks some).

    python benchmarks/compare_estimators.py --dataset ../shared/data/sst2 --methods gae,dpo_online,dpo_offline \
        --learning-rates 7.5e-5,1.5e-4                                        # cpu profile: ~2 h on 2 cores
    python benchmarks/compare_estimators.py --report                          # the table and plot of a saved run

What it does, in order:
1. Notebooks 1 and 2 in the profile (`cpu`: real SST-2, small GPT-2s), unless their models are already in the
   profile's output folder: every method then starts from the same SFT model and is scored by the same reward model.
2. Tuning: notebook 3, top to bottom, for each trained method at each of its settings (--learning-rates; DPO: each
   of --dpo-betas with each of --dpo-learning-rates), seed 0. A method keeps the setting with the highest held-out
   objective, mean(s) - beta * KL (s: the normalised score minus the missing-EOS penalty, as in training), the
   quantity PPO maximises: the judge chooses nothing.
3. Seeds: notebook 3 again at the kept setting with the other --seeds.
4. Best-of-N, the baseline without training: N samples per held-out prompt from the SFT model, the reward model's
   best kept, N = 1, 2, 4, ... --best-of; its KL is log N - (N - 1) / N (ru.best_of_n_kl).
Every method sees the same prompts (a seed sets them), the same number of episodes (num_iterations x batch_size) and
the same KL coefficient; the group methods split each batch into batch_size / k prompts with k responses each.

Each notebook runs in its own kernel (--workers at a time, one thread each): its peak memory is the kernel's peak
resident memory, its time the PPO loop's own clocks. Results go to --json as they arrive (a rerun skips the runs
already there), the table to stdout and --table, the frontier plot to --figure.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlhf_support.config import ADVANTAGE_ESTIMATORS, GROUP_ESTIMATORS  # noqa: E402

ESTIMATORS = ADVANTAGE_ESTIMATORS  # notebook 3's loop, advantage_estimator
DPO_METHODS = ("dpo_offline", "dpo_online")  # notebook 3's DPO loop (section 8.3): pairs once, or every round
METHODS = ESTIMATORS + DPO_METHODS
LABELS = {
    "sft": "SFT model (no training)",
    "gae": "PPO (GAE, value head)",
    "rloo": "RLOO",
    "grpo": "GRPO",
    "dr_grpo": "Dr. GRPO",
    "reinforce_pp": "REINFORCE++",
    "dpo_offline": "DPO, offline (pairs from the SFT model, once)",
    "dpo_online": "DPO, online (fresh pairs every round)",
    "best_of_n": "best-of-N",
}
GROUP_METHODS = GROUP_ESTIMATORS

# Appended to notebook 3: what the comparison reads back from the kernel, as one line of JSON.
RESULT_CELL = """
import json as _json
import resource as _resource
_dpo = cfg.dpo_pairs > 0
_loop = dpo_seconds if _dpo else history.to_frame()[["time/generate_s", "time/score_s", "time/optimise_s"]].sum().sum()
print("RESULT " + _json.dumps({
    "sft": sft_summary, "policy": dpo_summary if _dpo else ppo_summary, "loop_s": float(_loop),
    "verdict": "-" if _dpo else health.attrs["verdict"],
    "unhealthy_rows": [] if _dpo else [f"{m} ({v})" for m, v in health["verdict"].items() if v != "healthy"],
    "dpo_beta": cfg.dpo_beta, "dpo_rounds": cfg.dpo_rounds,
    "implicit_reward_agreement": agreement if _dpo else None,
    "peak_rss_mb": _resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss / 1024,
    "kl_coef": float(kl_controller.value), "score_mean": score_mean, "score_std": score_std,
    "missing_eos_penalty": cfg.missing_eos_penalty, "estimator": cfg.advantage_estimator,
    "samples_per_prompt": cfg.samples_per_prompt, "seed": cfg.seed,
    "learning_rate": cfg.dpo_learning_rate if _dpo else cfg.learning_rate,
    "episodes": 2 * cfg.dpo_pairs if _dpo else cfg.num_iterations * cfg.batch_size,
    "value_head_trained": any(bool((p != 0).any()) for p in policy.value_head.parameters()),
}))
"""


def run_notebook(notebook: str, env: dict[str, str], extra_cell: str | None = None, timeout: int = 3600) -> str:
    """Execute a notebook top to bottom in a fresh kernel with `env` added to its environment (this process's stays
    as it is); returns the text the extra cell printed."""
    import nbclient
    import nbformat

    nb = nbformat.read(ROOT / notebook, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    if extra_cell:
        nb.cells.append(nbformat.v4.new_code_cell(extra_cell))
    nbclient.NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute(env=os.environ | env)
    return "".join(o.get("text", "") for o in nb.cells[-1].outputs) if extra_cell else ""


def base_env(args: argparse.Namespace) -> dict[str, str]:
    env = {"RLHF_PROFILE": args.profile, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    if args.dataset:
        env["RLHF_DATASET"] = args.dataset  # as notebooks 1 and 2 were given it: the base model records it
    if args.output_dir:
        env["RLHF_OUTPUT_DIR"] = str(Path(args.output_dir).resolve())
    env.update(dict(item.split("=", 1) for item in args.set))
    return env


def output_dir(args: argparse.Namespace) -> Path:
    import rlhf_utils as ru

    return ROOT / ru.make_config(ru.PPOConfig, os.environ | base_env(args)).output_dir


def settings_of(method: str, args: argparse.Namespace) -> list[str]:
    """The tuning budget of a method: its learning rates (the estimators), or beta and learning rate pairs (DPO)."""
    if method in DPO_METHODS:
        return [f"beta={beta:g},lr={lr:g}" for beta in args.dpo_betas for lr in args.dpo_learning_rates]
    return [f"lr={lr:g}" for lr in args.learning_rates]


def run_name(method: str, setting: str, seed: int) -> str:
    return f"{method}/{setting}/seed={seed}"


def ppo_run(args: argparse.Namespace, method: str, setting: str, seed: int) -> dict[str, Any]:
    """Notebook 3 with one method, setting and seed, in its own folders; its RESULT line, with the wall time.

    An estimator runs the PPO loop (section 4) for the whole budget, section 8 skipped; DPO runs its loop of section
    8.3 with the whole budget of pairs (2 responses each), after a PPO loop of one iteration that it does not use."""
    folder = Path(args.runs_dir).resolve() / method / setting / f"seed={seed}"
    values = dict(item.split("=") for item in setting.split(","))
    env = base_env(args) | {
        "RLHF_SEED": str(seed),
        "RLHF_CHECKPOINT_DIR": str(folder / "checkpoint"),
        "RLHF_POLICY_DIR": str(folder / "policy"),
        "RLHF_FIGURES_DIR": str(folder / "figures"),
        "RLHF_RESUME": "0",
        "RLHF_SECTION8_ITERATIONS": "0",
    }
    if method in DPO_METHODS:
        episodes = args.episodes
        env |= {
            "RLHF_NUM_ITERATIONS": "1",
            "RLHF_DPO_PAIRS": str(episodes // 2),
            "RLHF_DPO_ROUNDS": "1" if method == "dpo_offline" else str(args.dpo_online_rounds),
            "RLHF_DPO_BETA": values["beta"],
            "RLHF_DPO_LEARNING_RATE": values["lr"],
        }
    else:
        env |= {
            "RLHF_ADVANTAGE_ESTIMATOR": method,
            "RLHF_SAMPLES_PER_PROMPT": str(args.samples_per_prompt if method in GROUP_METHODS else 1),
            "RLHF_LEARNING_RATE": values["lr"],
            "RLHF_DPO_PAIRS": "0",
        }
    started = time.perf_counter()
    printed = run_notebook("3-RLHF.ipynb", env, RESULT_CELL, timeout=args.timeout)
    line = next(line for line in printed.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT ")) | {"wall_s": time.perf_counter() - started}


def best_of_n_run(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Best-of-N from the SFT model on notebook 3's held-out prompts for `seed`: a summary per N = 1, 2, 4, ..."""
    import resource

    import torch

    import rlhf_utils as ru

    os.environ.update(base_env(args) | {"RLHF_SEED": str(seed)})
    torch.set_num_threads(1)
    cfg = ru.make_config(ru.PPOConfig)
    device = ru.resolve_device("cpu")
    precision = ru.resolve_precision(device, cfg.precision, cfg.profile)
    sft_path, reward_path = ru.find_ppo_inputs(cfg)
    tokenizer = ru.load_tokenizer(str(sft_path), padding_side="left")
    sft = ru.load_causal_lm(str(sft_path), device).eval().requires_grad_(False)
    reward_model, _, info = ru.load_reward_model(reward_path, device)
    dataset = ru.load_sst2(cfg.dataset_name)
    prompts = ru.make_prompts(
        dataset["validation"]["sentence"], tokenizer, cfg.prompt_min_words, cfg.prompt_max_words, seed=cfg.seed + 1
    )  # fmt: skip  (notebook 3's evaluation prompts)
    prompts = prompts[: cfg.eval_prompts] if cfg.eval_prompts else prompts
    judge, started, tables = ru.SentimentJudge(), time.perf_counter(), []
    for draw in range(args.best_of):  # draw 0 samples as notebook 3's SFT evaluation does (seed = cfg.seed)
        _, table = ru.evaluate_policy(sft, sft, reward_model, tokenizer, prompts, cfg.response_length,
                                      cfg.temperature, seed=cfg.seed + 1000 * draw, batch_size=cfg.batch_size,
                                      precision=precision, threshold=info["threshold"], judge=judge,
                                      chunk_size=cfg.minibatch_size)  # fmt: skip
        tables.append(table)
    sizes = [2**i for i in range(int(math.log2(args.best_of)) + 1)]
    return {
        "seed": seed,
        "by_n": {str(n): ru.best_of_n(tables, n)[0] for n in sizes},
        "wall_s": time.perf_counter() - started,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "score_mean": info["score_mean"],
        "score_std": info["score_std"],
    }


def objective(result: dict[str, Any]) -> float:
    """Held-out mean(s) - beta * KL, s the normalised score minus the missing-EOS penalty: what training maximises."""
    summary = result["policy"]
    score = (summary["raw_score_mean"] - result["score_mean"]) / result["score_std"]
    score -= result["missing_eos_penalty"] * (1 - summary["eos_share"])
    return score - result["kl_coef"] * summary["kl_to_ref"]


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {"ppo": {}, "best_of_n": {}}


def save(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)  # atomic: an interrupted run never leaves half a file


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    path = Path(args.json)
    results = load(path)
    results["settings"] = {k: v for k, v in vars(args).items() if k not in ("report",)}
    out = output_dir(args)
    if not ((out / "sft_model").exists() and (out / "reward_model").exists()):
        for notebook in ("1-SFT.ipynb", "2-RM Training.ipynb"):
            print(f"running {notebook} ({args.profile} profile): its model is not in {out}", flush=True)
            run_notebook(notebook, base_env(args), timeout=args.timeout)
    context = multiprocessing.get_context("spawn")
    started = time.perf_counter()

    def submit_all(pool, jobs):
        futures = {}
        for kind, key, fn, fn_args in jobs:
            if key in results[kind]:
                continue
            futures[pool.submit(fn, args, *fn_args)] = (kind, key)
        for future in concurrent.futures.as_completed(futures):
            kind, key = futures[future]
            results[kind][key] = future.result()
            save(path, results)
            print(f"{time.perf_counter() - started:7.0f} s  done {kind} {key}", flush=True)

    with concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=context, max_tasks_per_child=1) as pool:
        tuning = [("ppo", run_name(m, setting, args.seeds[0]), ppo_run, (m, setting, args.seeds[0]))
                  for m in args.methods for setting in settings_of(m, args)]  # fmt: skip
        tuning += [("best_of_n", str(seed), best_of_n_run, (seed,)) for seed in args.seeds]
        submit_all(pool, tuning)
        kept = kept_settings(results, args)
        seeds = [("ppo", run_name(m, kept[m], seed), ppo_run, (m, kept[m], seed))
                 for m in args.methods for seed in args.seeds[1:]]  # fmt: skip
        submit_all(pool, seeds)
    results["total_s"] = results.get("total_s", 0.0) + time.perf_counter() - started
    save(path, results)
    return results


def kept_settings(results: dict[str, Any], args: argparse.Namespace) -> dict[str, str]:
    """Per method, the setting whose seed-0 run had the highest held-out objective."""
    kept = {}
    for method in args.methods:
        runs = {
            setting: results["ppo"][run_name(method, setting, args.seeds[0])] for setting in settings_of(method, args)
        }
        kept[method] = max(runs, key=lambda setting: objective(runs[setting]))
    return kept


def spread(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    """'mean (min-max)' of a list, scaled."""
    values = [v * scale for v in values]
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    """The comparison as a Markdown table: one row per method at its kept setting, mean (min-max) over the seeds."""
    kept = kept_settings(results, args)
    header = (
        "| method | setting | judge positive % | reward model positive % | KL (nats / seq.) | distinct-2 "
        "| repeat % | objective | training s | peak memory MB |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = []
    sft_runs = [results["ppo"][run_name(args.methods[0], kept[args.methods[0]], s)]["sft"] for s in args.seeds]
    rows.append(
        f"| {LABELS['sft']} | - | {spread([r['judge_positive_share'] for r in sft_runs], 100)} "
        f"| {spread([r['positive_share'] for r in sft_runs], 100)} | 0 | {spread([r['distinct_2'] for r in sft_runs], 1, 3)} "
        f"| {spread([r['repeat_share'] for r in sft_runs], 100)} | | | |"
    )
    constants = results["ppo"][run_name(args.methods[0], kept[args.methods[0]], args.seeds[0])]  # beta, the penalty
    for n in [str(2**i) for i in range(int(math.log2(args.best_of)) + 1)][1:]:
        runs = [results["best_of_n"][str(s)] for s in args.seeds]
        summaries = [r["by_n"][n] for r in runs]
        objectives = [objective(constants | {"policy": summary}) for summary in summaries]
        rows.append(
            f"| {LABELS['best_of_n']}, N = {n} | - | {spread([r['judge_positive_share'] for r in summaries], 100)} "
            f"| {spread([r['positive_share'] for r in summaries], 100)} | {summaries[0]['kl_to_ref']:.2f} "
            f"| {spread([r['distinct_2'] for r in summaries], 1, 3)} | {spread([r['repeat_share'] for r in summaries], 100)} "
            f"| {spread(objectives, 1, 2)} | none: {int(n)} samples per prompt | |"
        )
    for method in args.methods:
        runs = [results["ppo"][run_name(method, kept[method], s)] for s in args.seeds]
        policy = [r["policy"] for r in runs]
        rows.append(
            f"| {LABELS[method]} | {kept[method]} | {spread([p['judge_positive_share'] for p in policy], 100)} "
            f"| {spread([p['positive_share'] for p in policy], 100)} | {spread([p['kl_to_ref'] for p in policy], 1, 2)} "
            f"| {spread([p['distinct_2'] for p in policy], 1, 3)} | {spread([p['repeat_share'] for p in policy], 100)} "
            f"| {spread([objective(r) for r in runs], 1, 2)} | {spread([r['loop_s'] for r in runs], 1, 0)} "
            f"| {spread([r['peak_rss_mb'] for r in runs], 1, 0)} |"
        )
    tuning = ["| method | setting | objective | judge positive % | KL | health verdict |", "|---|---|---|---|---|---|"]
    for method in args.methods:
        for setting in settings_of(method, args):
            r = results["ppo"][run_name(method, setting, args.seeds[0])]
            mark = " **(kept)**" if setting == kept[method] else ""
            tuning.append(
                f"| {LABELS[method]} | {setting}{mark} | {objective(r):.2f} | {100 * r['policy']['judge_positive_share']:.1f} "
                f"| {r['policy']['kl_to_ref']:.2f} | {verdict_text(r)} |"
            )
    return "\n".join([header, *rows, "", f"Tuning, seed {args.seeds[0]}:", "", *tuning])


def verdict_text(result: dict[str, Any]) -> str:
    """The health verdict, with the rows behind a warning where the run recorded them (runs since they were kept)."""
    rows = result.get("unhealthy_rows")
    return f"{result['verdict']}: {', '.join(rows)}" if rows else result["verdict"]


def args_of(results: dict[str, Any]) -> argparse.Namespace:
    """The settings a saved comparison ran with (the defaults for any it did not record)."""
    args = parse_args([])
    for key, value in results.get("settings", {}).items():
        setattr(args, key, value)
    return args


def frontier_figure(results: dict[str, Any], args: argparse.Namespace | None = None,
                    this_run: dict[str, dict[str, float]] | None = None, run_label: str = "this notebook"):  # fmt: skip
    """The frontier: the judge's positive share against the KL, each method at its kept setting (mean, and the range
    over seeds as error bars), its other tuning runs faint, best-of-N as a line over N, the SFT model at KL 0; and
    `this_run`, a notebook's own evaluation summaries by name ("SFT", "PPO", ...), in black, an arrow from its SFT."""
    import matplotlib.pyplot as plt

    args = args or args_of(results)
    kept = kept_settings(results, args)
    fig, ax = plt.subplots(figsize=(7.8, 4.8))
    sizes = [str(2**i) for i in range(int(math.log2(args.best_of)) + 1)]
    bon = [[results["best_of_n"][str(s)]["by_n"][n] for s in args.seeds] for n in sizes]
    bon_judge = [100 * statistics.mean(r["judge_positive_share"] for r in runs) for runs in bon]
    ax.plot([runs[0]["kl_to_ref"] for runs in bon], bon_judge, "k--", marker=".", label="best-of-N from SFT (N = 1 ... "
            f"{args.best_of})")  # fmt: skip
    for n, kl, judge in zip(sizes, [runs[0]["kl_to_ref"] for runs in bon], bon_judge):
        label = "SFT (N=1)" if n == "1" else f"N={n}"
        ax.annotate(label, (kl, judge), textcoords="offset points", xytext=(4, -10), fontsize=7)
    kept_runs = {m: [results["ppo"][run_name(m, kept[m], s)]["policy"] for s in args.seeds] for m in args.methods}
    shown = [p["kl_to_ref"] for runs in kept_runs.values() for p in runs] + [
        s["kl_to_ref"] for s in (this_run or {}).values()
    ]
    right = 1.25 * max([*shown, bon[-1][0]["kl_to_ref"], 1.0])  # a tuning run further out is drawn at the edge
    at_edge = []  # (judge, KL, colour) of the tuning runs drawn at the right edge
    for i, method in enumerate(args.methods):
        color, marker = f"C{i}", "s" if method in DPO_METHODS else "o"
        for setting in settings_of(method, args):
            if setting != kept[method]:
                r = results["ppo"][run_name(method, setting, args.seeds[0])]["policy"]
                kl, judge = r["kl_to_ref"], 100 * r["judge_positive_share"]
                if kl > right:
                    ax.plot(0.98 * right, judge, ">", color=color, alpha=0.5, ms=6)
                    at_edge.append((judge, kl, color))
                else:
                    ax.plot(kl, judge, marker, color=color, alpha=0.25, ms=5)
        policy = kept_runs[method]
        kls, judges = [p["kl_to_ref"] for p in policy], [100 * p["judge_positive_share"] for p in policy]
        x, y = statistics.mean(kls), statistics.mean(judges)
        ax.errorbar(x, y, xerr=[[x - min(kls)], [max(kls) - x]], yerr=[[y - min(judges)], [max(judges) - y]],
                    fmt=marker, color=color, capsize=3, ms=7, label=f"{LABELS[method]}, {kept[method]}")  # fmt: skip
    points = {name: (s["kl_to_ref"], 100 * s["judge_positive_share"]) for name, s in (this_run or {}).items()}
    markers = iter("*Ddv^")
    for name, (kl, judge) in points.items():
        marker = "X" if name == "SFT" else next(markers)
        ax.plot(kl, judge, marker, color="black", ms=11 if marker == "*" else 8, label=f"{run_label}: {name}")
        if name != "SFT" and "SFT" in points:
            ax.annotate("", (kl, judge), points["SFT"], arrowprops=dict(arrowstyle="->", color="black", lw=0.8))
    ax.set_xlim(-0.04 * right, right)
    bottom, top = ax.get_ylim()
    gap, below = 0.035 * (top - bottom), -math.inf  # a label's height: labels at the edge step up so none overlap
    for judge, kl, color in sorted(at_edge):
        below = max(judge, below + gap)
        ax.annotate(f"KL {kl:.1f}", (0.98 * right, below), textcoords="offset points", xytext=(-34, -3), fontsize=7,
                    color=color)  # fmt: skip
    ax.set_ylim(bottom, max(top, below + gap))
    ax.set_xlabel("KL to the SFT model, nats per sequence (held-out prompts)")
    ax.set_ylabel("judge (VADER) positive share, %")
    ax.set_title(f"{args.profile} profile: mean and range over {len(args.seeds)} seeds; faint: other settings, seed "
                 f"{args.seeds[0]} (an arrow: further right, at the KL it names)", fontsize=9)  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def committed_run(args: argparse.Namespace) -> dict[str, dict[str, float]] | None:
    """Notebook 3's committed PPO run, as saved with its policy (--notebook-run), for the plot; None if not there."""
    saved = Path(args.notebook_run, "checkpoint.json") if args.notebook_run else None
    if saved is None or not saved.exists():
        return None
    return {"PPO": json.loads(saved.read_text())["meta"]["eval"]}  # its SFT point is not saved with it


def plot(results: dict[str, Any], args: argparse.Namespace, path: Path) -> None:
    """The frontier plot (`frontier_figure`), saved to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = frontier_figure(results, args, committed_run(args), run_label="notebook 3's committed run (its own settings)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--profile", default="cpu", help="notebook profile (cpu: real SST-2, small models; smoke: CI)")
    parser.add_argument("--dataset", default=None, help="SST-2 folder (RLHF_DATASET), e.g. ../shared/data/sst2")
    parser.add_argument("--output-dir", default=None, help="the profile's output folder (RLHF_OUTPUT_DIR)")
    parser.add_argument("--methods", type=lambda s: s.split(","), default=list(METHODS))
    parser.add_argument("--learning-rates", type=lambda s: [float(x) for x in s.split(",")],
                        default=[3.75e-5, 7.5e-5, 1.5e-4, 3e-4], help="the tuning budget: each method tries each")  # fmt: skip
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2],
                        help="the first tunes, the rest repeat the kept rate")  # fmt: skip
    parser.add_argument("--samples-per-prompt", type=int, default=4, help="k of rloo, grpo and dr_grpo")
    parser.add_argument("--dpo-betas", type=lambda s: [float(x) for x in s.split(",")], default=[0.05, 0.2],
                        help="DPO's tuning budget: each beta with each --dpo-learning-rates")  # fmt: skip
    parser.add_argument("--dpo-learning-rates", type=lambda s: [float(x) for x in s.split(",")], default=[5e-5, 2e-4])
    parser.add_argument("--dpo-online-rounds", type=int, default=120, help="online DPO: rounds of fresh pairs")
    parser.add_argument("--episodes", type=int, default=15360,
                        help="sampled responses per run: the estimators' num_iterations x batch_size (the cpu "
                             "profile's 120 x 128); DPO samples as many, two per pair")  # fmt: skip
    parser.add_argument("--notebook-run", default="outputs/cpu/ppo_policy",
                        help="notebook 3's own committed run (its saved policy), marked on the plot")  # fmt: skip
    parser.add_argument("--best-of", type=int, default=16, help="largest N of best-of-N (a power of 2)")
    parser.add_argument("--workers", type=int, default=2, help="notebooks run at a time, one thread each")
    parser.add_argument("--set", action="append", default=[], help="more RLHF_ settings, NAME=value (repeatable)")
    parser.add_argument("--runs-dir", default="outputs/estimators", help="the runs' checkpoints and policies")
    parser.add_argument("--json", default="benchmarks/results/estimators_cpu.json")
    parser.add_argument("--table", default="benchmarks/results/estimators_cpu.md")
    parser.add_argument("--figure", default="images/cpu_profile/estimator_frontier.png")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds a notebook may run")
    parser.add_argument("--report", action="store_true", help="only write the table and plot of --json")
    args = parser.parse_args(argv)
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        parser.error(f"--methods: {sorted(unknown)} unknown; use some of {', '.join(METHODS)}")
    if args.best_of < 1 or args.best_of & (args.best_of - 1):
        parser.error(f"--best-of={args.best_of}: use a power of 2 (1, 2, 4, ...)")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.report:  # the saved run's methods and settings; this command's files
        files = {k: getattr(args, k) for k in ("json", "table", "figure", "notebook_run")}
        results = load(Path(args.json))
        args = args_of(results)
        vars(args).update(files)
    else:
        results = run_all(args)
    table = report(results, args)
    print(table)
    Path(args.table).parent.mkdir(parents=True, exist_ok=True)
    Path(args.table).write_text(table + "\n")
    plot(results, args, Path(args.figure))
    print(f"table: {args.table}; plot: {args.figure}; total {results.get('total_s', 0) / 60:.1f} minutes of runs")
    return results


if __name__ == "__main__":
    main()
