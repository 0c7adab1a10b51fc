"""What each profile changes: values only, so that every profile runs the same lines of code. `full` (pretrained
GPT-2 small on a GPU) is the config classes' defaults; `cpu` and `smoke` override them here, and build their own
assets (profiles.py). The tuning runs behind the cpu profile's values: benchmarks/results/tuning_log.md."""

from __future__ import annotations

from typing import Any

PROFILE_NAMES = ("full", "cpu", "smoke")

# profile -> config class name ("*": every class) -> field -> value
PROFILE_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {
        "*": dict(
            output_dir="outputs/smoke",
            model_name="{output_dir}/base_model",
            dataset_name="{output_dir}/data/sst2",
            max_length=32,
        ),
        "SFTConfig": dict(
            batch_size=32,
            learning_rate=3e-3,
            warmup_ratio=0.05,
            num_epochs=4.0,
            max_train_samples=0,
            eval_every=50,
            num_eval_generations=32,
            sample_max_new_tokens=16,
        ),
        "RMConfig": dict(
            batch_size=32,
            learning_rate=2e-3,
            num_epochs=2.0,
            max_train_samples=0,
            compare_max_steps=60,
            eval_every=25,
            norm_samples=400,
            prefix_lengths="2|4|8",
            label_pairs=24,
            simulated_pairs=800,  # enough decided pairs beyond the 300 held out for a learning curve
            label_response_length=12,
        ),
        "PPOConfig": dict(
            require_cuda=False,
            num_iterations=30,
            batch_size=64,
            minibatch_size=16,
            ppo_epochs=4,
            response_length=12,
            learning_rate=1e-3,
            kl_horizon=1000,
            eval_prompts=128,
            samples_every=10,
            checkpoint_every=10,
            section8_iterations=3,
            dpo_learning_rate=1e-3,
            dpo_pairs=64,
            dpo_batch_size=16,
        ),
    },
    "cpu": {
        "*": dict(
            output_dir="outputs/cpu",
            model_name="{output_dir}/base_model",
            precision="auto",
            figures_dir="images/cpu_profile",
        ),
        "SFTConfig": dict(
            batch_size=64,
            learning_rate=2e-3,
            warmup_ratio=0.02,
            num_epochs=2.0,
            eval_every=200,
            num_eval_generations=128,
        ),
        # The reward model's trunk starts from the random base model, not the SFT model (tuning_log.md).
        "RMConfig": dict(
            batch_size=64,
            learning_rate=1e-3,
            lr_schedule="cosine",
            warmup_ratio=0.1,
            num_epochs=1.0,
            compare_max_steps=150,
            eval_every=200,
            norm_samples=2000,
        ),
        # A fixed KL coefficient of 0.12 and a learning rate of 1.5e-4, from the tuning runs (tuning_log.md).
        "PPOConfig": dict(
            require_cuda=False,
            num_iterations=120,
            batch_size=128,
            minibatch_size=32,
            response_length=24,
            learning_rate=1.5e-4,
            init_kl_coef=0.12,
            adaptive_kl=False,
            vf_coef=1.0,
            eval_prompts=0,
            samples_every=30,
            checkpoint_every=30,
            dpo_learning_rate=1e-4,
            dpo_pairs=1024,
        ),
    },
}
