"""The support names the notebooks call as `ru.<name>`, in one place: rlhf_utils re-exports exactly `__all__`
(`from rlhf_support.exports import *`), so a notebook reaches the plumbing through the same `ru.` as the lessons.
The last group is what the tests and benchmarks also reach that way."""

from __future__ import annotations

from .checkpoints import (
    REWARD_CONFIG,
    REWARD_MODEL_LAYOUT,
    make_output_folders,
    recover_checkpoint,
    require_same_vocabulary,
    save_causal_lm,
    save_reward_model,
    verify_checkpoint,
)
from .colab import colab_install, finish_drive_uploads, in_colab, keep_outputs_on_drive
from .config import PPOConfig, RMConfig, SFTConfig, config_table, make_config, split_list
from .data import load_sst2
from .device import (
    Precision,
    count_parameters,
    describe_device,
    device_clock,
    resolve_device,
    resolve_precision,
    seed_everything,
    use_fused_gelu,
)
from .errors import CheckpointError, RLHFError
from .evaluation import (
    SentimentJudge,
    binomial_interval,
    decode_responses,
    distinct_n,
    grouped_distinct_n,
    is_content_word,
    known_words,
    real_word_share,
    repeats_a_word,
    response_real_word_share,
    response_words,
    sample_table,
)
from .exercises import EXERCISES, CheckResult
from .exercises import solution as show_solution
from .guards import data_fingerprint, grad_norm_metrics, save_unless_worse, stop_if_diverged
from .health import ppo_health_table, ppo_run_verdict
from .hub import load_causal_lm, load_tokenizer, push_folder_to_hub
from .labelling import LabelJournal, Labeller, Pair, pairs_fingerprint, preferred, simulated_labels
from .labelling import consistency as label_consistency
from .loop import RunTracker
from .metrics import explained_variance, minibatch_stats, ppo_metrics
from .notebook_cells import run_tagged_cell
from .profiles import prepare_profile
from .reporting import History, plot_history, progress, save_figure, show_source
from .resume import (
    checkpoint_due,
    find_ppo_inputs,
    ppo_run_signature,
    ppo_write_plan,
    resume_or_start,
    save_ppo_checkpoint,
)

__all__ = [
    # setup, configuration, device (every notebook)
    "in_colab", "colab_install", "keep_outputs_on_drive", "finish_drive_uploads",
    "SFTConfig", "RMConfig", "PPOConfig", "make_config", "config_table", "split_list", "prepare_profile",
    "make_output_folders", "resolve_device", "resolve_precision", "seed_everything", "describe_device",
    "count_parameters", "RLHFError",
    # data, models, saving
    "load_sst2", "load_tokenizer", "load_causal_lm", "save_causal_lm", "save_reward_model", "require_same_vocabulary",
    "push_folder_to_hub", "data_fingerprint", "save_unless_worse",
    # training and reporting
    "History", "progress", "plot_history", "save_figure", "show_source", "stop_if_diverged", "grad_norm_metrics",
    "EXERCISES", "CheckResult", "show_solution",
    # notebook 2: labelling, the judge
    "Pair", "LabelJournal", "Labeller", "pairs_fingerprint", "simulated_labels", "preferred", "label_consistency",
    "SentimentJudge", "binomial_interval",
    # notebook 3: inputs, the loop's plumbing, checkpoints, evaluation
    "find_ppo_inputs", "ppo_write_plan", "ppo_run_signature", "resume_or_start", "save_ppo_checkpoint",
    "checkpoint_due", "RunTracker", "device_clock", "minibatch_stats", "ppo_metrics", "sample_table",
    "ppo_health_table", "ppo_run_verdict",
    "known_words", "real_word_share", "response_real_word_share", "response_words", "is_content_word",
    "repeats_a_word", "run_tagged_cell",
    # also reached as ru.<name> by the tests and benchmarks
    "CheckpointError", "verify_checkpoint", "recover_checkpoint", "REWARD_CONFIG", "REWARD_MODEL_LAYOUT",
    "Precision", "use_fused_gelu", "decode_responses", "distinct_n", "grouped_distinct_n", "explained_variance",
]  # fmt: skip
