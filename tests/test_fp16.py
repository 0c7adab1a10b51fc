"""The T4's precision path on a CPU: fp16 autocast with loss scaling, steps skipped on overflow, no inf in the history.

A T4 has no bf16, so Colab runs the series in fp16 with a GradScaler; CI has no GPU. PyTorch supports fp16
autocast and the GradScaler on the CPU too, so these tests run that branch here: the helpers on their own,
then the three notebooks (smoke profile, a few steps) in fp16 with a loss scale so large that the first
steps overflow and must be skipped.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import rlhf_utils as ru
from rlhf_support.errors import TrainingDivergedError

ROOT = Path(__file__).resolve().parents[1]


def test_fp16_on_a_cpu_is_the_t4_path():
    precision = ru.resolve_precision(torch.device("cpu"), "fp16")
    assert precision.name == "fp16" and precision.use_grad_scaler and precision.grad_scaler().is_enabled()
    with precision.autocast():
        out = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert out.dtype == torch.float16
    assert ru.resolve_precision(torch.device("cpu"), "auto", "full").name == "fp32"  # never chosen by 'auto'


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


# Appended to each notebook: the loop's own history, inspected in the notebook's kernel.
HISTORY_CHECK = """
import math
assert precision.name == "fp16", precision
skipped = sum(history.series("{prefix}/skipped_steps")[1])
steps = len(history.series("{prefix}/skipped_steps")[1])
assert skipped >= 1, "no step overflowed: the test did not reach the skipping path"
assert skipped < steps * {per_row}, "every step was skipped: nothing trained"
infinite = [(row["step"], k, v) for row in history.rows for k, v in row.items() if not math.isfinite(v)]
assert not infinite, infinite
assert all(math.isfinite(v) for v in history.series("{loss}")[1])
print("fp16 check:", int(skipped), "skipped")
"""

STEPS = {
    "RLHF_MAX_TRAIN_SAMPLES": "400",
    "RLHF_NUM_EPOCHS": "2",
    "RLHF_EVAL_EVERY": "5",
    "RLHF_NUM_EVAL_GENERATIONS": "8",
    "RLHF_SAMPLE_MAX_NEW_TOKENS": "8",
    "RLHF_COMPARE_LOSSES": "0",
    "RLHF_NORM_SAMPLES": "64",
    "RLHF_NUM_ITERATIONS": "4",
    "RLHF_PPO_EPOCHS": "2",
    "RLHF_RESPONSE_LENGTH": "8",
    "RLHF_EVAL_PROMPTS": "16",
    "RLHF_CURVE_PROMPTS": "8",
}


@pytest.mark.usefixtures("no_rlhf_settings")
def test_the_notebooks_run_in_fp16_with_skipped_steps(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    env = {
        "RLHF_SMOKE": "1",
        "RLHF_OUTPUT_DIR": str(tmp_path / "out"),
        "RLHF_PRECISION": "fp16",
        "RLHF_INIT_LOSS_SCALE": str(2.0**24),
        "HF_HUB_OFFLINE": "1",
        "MPLBACKEND": "Agg",
        "RLHF_SAVE_WORSE_MODEL": "1",  # runs this short are not meant to learn; they exercise the fp16 path
        **STEPS,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    checks = {
        "1-SFT.ipynb": ("train", "train/loss", 1),
        "2-RM Training.ipynb": ("train", "train/loss", 1),
        "3-RLHF.ipynb": ("policy", "loss/policy", 8),
    }  # PPO: 2 epochs x 4 minibatches per logged row
    for notebook, (prefix, loss, per_row) in checks.items():
        nb = nbformat.read(ROOT / notebook, as_version=4)
        nb.cells.append(nbformat.v4.new_code_cell(HISTORY_CHECK.format(prefix=prefix, loss=loss, per_row=per_row)))
        nbclient.NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
        ).execute()
        printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
        assert "fp16 check:" in printed, printed
    assert ru.verify_checkpoint(tmp_path / "out" / "ppo_policy")["kind"] == "causal_lm"
