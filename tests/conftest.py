"""Shared fixtures: a tiny offline GPT-2 and the smoke data, built once per test session in a temp folder.

Nothing here touches outputs/ or the real SST-2: every asset is built by rlhf_utils itself.
"""
import os
import sys
from pathlib import Path

# Before anything imports transformers/datasets: they read HF_HUB_OFFLINE once, at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402
import torch  # noqa: E402

import rlhf_utils as ru  # noqa: E402

# One thread: the models here are tiny, and on a busy 2-core machine two OpenMP threads that
# spin-wait for each other made the PPO test 10-40x slower (measured: 4 s vs 55 s).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def smoke_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{'data': smoke SST-2 folder, 'base': tiny GPT-2 + BPE tokenizer folder}, built once."""
    root = tmp_path_factory.mktemp("smoke")
    data = ru.build_smoke_dataset(root / "data" / "sst2", **ru.SMOKE_DATA_SIZES)
    base = ru.build_base_model(root / "base_model", str(data), "smoke", seed=0)
    return {"data": data, "base": base}


@pytest.fixture(scope="session")
def smoke_rows() -> dict[str, list[dict]]:
    """The smoke SST-2 rows as Python dicts (the same data the smoke folder holds)."""
    return ru.make_smoke_sst2(**ru.SMOKE_DATA_SIZES, seed=0)


@pytest.fixture(scope="session")
def tokenizer(smoke_dirs: dict[str, Path]):
    """The smoke tokenizer, right padding (EOS doubles as pad, as in GPT-2)."""
    return ru.load_tokenizer(str(smoke_dirs["base"]), padding_side="right")


@pytest.fixture
def tiny_lm(smoke_dirs: dict[str, Path]) -> torch.nn.Module:
    """A fresh copy of the tiny GPT-2 LM (fp32, CPU, eval mode): tests may change it freely."""
    return ru.load_causal_lm(str(smoke_dirs["base"])).eval()
