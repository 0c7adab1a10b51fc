"""rlhf_support: the plumbing of the "RLHF in Notebooks" series, one concern per module.

errors, config (and profile_values: what each profile changes), device (and precision), hub, data (SST-2 and its
schema), colab (and Drive), guards (failed runs), reporting (history, progress, plots), checkpoints (atomic saves,
models), resume (PPO's inputs and checkpoints), loop (RunTracker: the PPO loop's progress bar, phase times, what is
due), metrics (the PPO loop's metrics), evaluation (text statistics, the judge, sample tables), health (the PPO run's
health table), model_calls (fast, version-proof model calls), preference_pairs (DPO's pairs), profiles (the smoke and
cpu assets), smoke_data (the smoke profile's sentences), notebook_cells, labelling, exercises and solutions, and
exports: the names the notebooks call as ru.<name>.
The teaching code is rlhf_utils.py, which uses this package; nothing here imports rlhf_utils.
"""
