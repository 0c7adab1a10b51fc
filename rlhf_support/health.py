"""The PPO run's health table: each metric of a run beside the range a healthy run keeps it in and the range beyond
which the run is broken, with what a value outside means (notebook 3, section 5)."""

from __future__ import annotations

import math
import typing
from collections.abc import Sequence

import numpy as np

from .config import INF, PPOConfig
from .reporting import History

if typing.TYPE_CHECKING:  # for annotations only: pandas loads when first used
    import pandas as pd


class HealthRule(typing.NamedTuple):
    """One row of the health table: a metric, how the run is summarised, the healthy range, the range beyond which
    the run is broken (None: outside the healthy range is a warning, never broken), and what each side means."""

    metric: str
    summary: str
    healthy: tuple[float, float]
    broken: tuple[float, float] | None
    low_means: str
    high_means: str
    label: str = ""  # the row's name, where it is not the metric's


# Calibrated on measured runs of the cpu profile (notebook 3 on real SST-2, responses of at most 24 tokens, fixed
# beta): 0.12 is healthy on every row, 0.03 drifts (KL ~10, entropy down to 0.6 of its start, more repeats), 0.005
# collapses (strings of "and"). The KL bands are per sequence, so they hold for a fixed beta as for the adaptive
# controller; a task with longer responses needs wider ones. They are reasons to look, not theorems.
PPO_HEALTH_RULES: list[HealthRule] = [
    HealthRule("objective/kl", "last quarter", (0.0, 6.0), (-INF, 15.0), "",
               "the policy drifted far from the reference: raise beta (init_kl_coef) or stop earlier"),
    HealthRule("policy/entropy", "last quarter / first", (0.7, 1.5), (0.5, 3.0),
               "the policy narrowed onto a few continuations: the first sign of collapse (raise beta)",
               "the policy became more random than the SFT model (lower learning_rate)"),
    HealthRule("curve/distinct_2", "last quarter", (0.85, 1.0), (0.6, INF),
               "the responses repeat each other's word pairs (128 held-out responses): collapse", ""),
    HealthRule("curve/repeat_share", "last quarter", (0.0, 0.03), (-INF, 0.15), "",
               "many responses repeat a word 3+ times: reward hacking by repetition"),
    HealthRule("env/response_length", "last quarter / first", (0.5, 2.0), (0.25, 4.0),
               "the responses shrank: short endings are cheap reward (watch distinct-2)",
               "the responses grew long: check that they still end with EOS"),
    HealthRule("policy/approx_kl", "mean", (0.0, 0.05), (-INF, 0.2), "",
               "each epoch moves the policy far from the one that sampled: the clip no longer holds the update "
               "(lower learning_rate or ppo_epochs)"),
    HealthRule("policy/clipfrac", "mean", (0.0, 0.3), (-INF, 0.5), "",
               "most of the batch hits the clip: the updates are large (lower learning_rate or ppo_epochs)"),
    HealthRule("value/explained_variance", "last quarter", (0.2, 1.0), (0.0, INF),
               "the value head predicts the returns little better than a constant, so the advantages are mostly "
               "noise (raise vf_coef, train longer); below 0 it is worse than a constant", ""),
    HealthRule("policy/grad_norm", "last quarter / max_grad_norm", (0.0, 3.0), None, "",
               "the gradient sits far above the clip: every step is cut to max_grad_norm; look for a cause "
               "(a large learning rate, unnormalised scores)"),
]  # fmt: skip


def _outside(band: tuple[float, float]) -> str:
    """A broken band in words: 'above 15', 'below 0.6', 'outside 0.5 to 3'."""
    low, high = band
    return f"above {high:g}" if low == -INF else f"below {low:g}" if high == INF else f"outside {low:g} to {high:g}"


def _summarise(values: Sequence[float], summary: str, cfg: PPOConfig) -> float:
    """A series (one value per logged iteration) summarised as a rule asks: mean, last quarter, last quarter / first..."""
    quarter = float(np.mean(values[-max(1, len(values) // 4) :]))
    return {
        "mean": float(np.mean(values)),
        "last quarter": quarter,
        "last quarter / first": quarter / max(abs(values[0]), 1e-8),
        "last quarter / max_grad_norm": quarter / cfg.max_grad_norm,
        "last quarter / kl_target": quarter / cfg.kl_target,
    }[summary]


def ppo_health_table(history: History, cfg: PPOConfig) -> pd.DataFrame:
    """The run's own values beside PPO_HEALTH_RULES: a verdict per row (healthy, warning, broken) and what a value
    outside the healthy range means. The run's verdict is in `.attrs["verdict"]` (`ppo_run_verdict`)."""
    import pandas as pd

    rules = [r for r in PPO_HEALTH_RULES if cfg.advantage_estimator == "gae" or not r.metric.startswith("value/")]
    if cfg.adaptive_kl:  # the controller has a target: the KL should sit near it
        rules.append(HealthRule("objective/kl", "last quarter / kl_target", (0.5, 2.0), None,
                                "beta holds the policy back far below the target",
                                "the policy drifts faster than beta reacts (a smaller kl_horizon reacts sooner)",
                                "objective/kl vs kl_target"))  # fmt: skip
    rows = []
    for rule in rules:
        _, values = history.series(rule.metric)
        values = [v for v in values if math.isfinite(v)]
        if not values:
            continue
        value = _summarise(values, rule.summary, cfg)
        low, high = rule.healthy
        if low <= value <= high:
            verdict, reading = "healthy", ""
        else:
            broken = rule.broken is not None and not rule.broken[0] <= value <= rule.broken[1]
            verdict, reading = ("broken" if broken else "warning"), (rule.low_means if value < low else rule.high_means)
        rows.append(
            {
                "metric": rule.label or rule.metric,
                "this run": f"{value:.3g} ({rule.summary})",
                "healthy": f"{low:g} to {high:g}",
                "broken": "never" if rule.broken is None else _outside(rule.broken),
                "verdict": verdict,
                "reading": reading,
            }
        )
    table = pd.DataFrame(rows).set_index("metric")
    verdicts = set(table["verdict"])
    table.attrs["verdict"] = "broken" if "broken" in verdicts else "warned" if "warning" in verdicts else "healthy"
    return table


def ppo_run_verdict(history: History, cfg: PPOConfig) -> str:
    """'healthy' (every row in range), 'warned' (some row outside its healthy range) or 'broken' (some row beyond
    its broken range), from `ppo_health_table`."""
    return ppo_health_table(history, cfg).attrs["verdict"]
