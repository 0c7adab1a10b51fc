"""rlhf_support: the plumbing of the "RLHF in Notebooks" series, one concern per module.

errors, config (and the profiles), device (and precision), hub, data (SST-2 and its schema), colab (and Drive),
guards (failed runs), reporting (history, progress, plots), checkpoints (atomic saves, models), resume (PPO's inputs
and checkpoints), profiles (the smoke and cpu assets), smoke_data (the smoke profile's sentences).
The teaching code is rlhf_utils.py, which uses this package; nothing here imports rlhf_utils.
"""
