"""Shared fixtures: a tiny offline GPT-2 and the smoke data, built once per test session in a temp folder.

Nothing here touches outputs/ or the real SST-2: every asset is built offline by rlhf_support.profiles.
"""

import contextlib
import ctypes
import gc
import logging
import os
import sys
import traceback
import warnings
from pathlib import Path

# Before anything imports transformers/datasets: they read HF_HUB_OFFLINE once, at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402
import torch  # noqa: E402

import rlhf_utils as ru  # noqa: E402
from rlhf_support import smoke_data  # noqa: E402
from rlhf_support.config import ENV_PREFIX  # noqa: E402
from rlhf_support.profiles import SMOKE_DATA_SIZES, build_base_model, build_smoke_dataset  # noqa: E402

# ---------------------------------------------------------------------------
# Deprecations: a test fails when one of the project's own calls into transformers, datasets, torch (or
# the other Hugging Face libraries) makes that library warn that the call is deprecated, so the next
# removal is seen the day its warning appears, not the day a fresh install breaks the notebooks.

LIBRARIES = ("transformers", "datasets", "torch", "huggingface_hub", "tokenizers", "safetensors")
PROJECT_FILES = (ROOT / "rlhf_utils.py", ROOT / "rlhf_support", ROOT / "benchmarks", ROOT / "tests")


def _in_library(filename: str) -> bool:
    """True for a source file of one of LIBRARIES, as installed (site-packages or dist-packages)."""
    parts = Path(filename).parts
    return bool({"site-packages", "dist-packages"} & set(parts)) and any(name in parts for name in LIBRARIES)


def _from_project(stack: list) -> bool:
    """True when a frame of the call stack belongs to the project (its module, benchmarks or tests)."""
    return any(
        Path(frame.filename).resolve().is_relative_to(p)
        for frame in stack
        for p in PROJECT_FILES
        if "site-packages" not in frame.filename
    )


def _is_deprecation(category: type, message: str) -> bool:
    return (
        issubclass(category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning))
        or "deprecat" in message.lower()
    )


class DeprecationGuard:
    """Collects deprecation warnings that a library raised inside a call made by the project's code.

    Python warnings are seen while they are raised (the call stack is still there); transformers also
    announces some deprecations through its logger, which is watched too.
    """

    def __init__(self) -> None:
        self.found: list[str] = []

    def _showwarning(self, message, category, filename, lineno, file=None, line=None) -> None:
        stack = traceback.extract_stack()[:-1]
        if _is_deprecation(category, str(message)) and _in_library(filename) and _from_project(stack):
            caller = next(f for f in reversed(stack) if _from_project([f]))
            self.found.append(
                f"{category.__name__}: {message} ({filename}:{lineno}; called from {caller.filename}:{caller.lineno})"
            )
        else:  # everything else goes where it went before (pytest's warning summary)
            warnings._showwarnmsg_impl(warnings.WarningMessage(message, category, filename, lineno, file, line))

    def emit(self, record: logging.LogRecord) -> None:  # a logging.Handler's method, for transformers' logger
        text = record.getMessage()
        if "deprecat" in text.lower() and _from_project(traceback.extract_stack()):
            self.found.append(f"transformers log: {text}")

    def __enter__(self) -> "DeprecationGuard":
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning, UserWarning):
            warnings.simplefilter("always", category)
        warnings.showwarning = self._showwarning
        self._handler = logging.Handler()
        self._handler.emit = self.emit
        logging.getLogger("transformers").addHandler(self._handler)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger("transformers").removeHandler(self._handler)
        self._warnings.__exit__(*exc)


@pytest.fixture(autouse=True)
def no_deprecated_calls():
    """Fail the test when the project's code made a library warn about a deprecated call."""
    with DeprecationGuard() as guard:
        yield guard
    if guard.found:
        pytest.fail("deprecated calls into a library:\n" + "\n".join(dict.fromkeys(guard.found)), pytrace=False)


# transformers' logger must stay at WARNING in the tests, so that its deprecation notices reach the guard
# (rlhf_utils turns it down to ERROR in the notebooks, where such chatter would only distract).
import transformers  # noqa: E402

transformers.logging.set_verbosity_warning()
transformers.logging.set_verbosity_error = lambda: None


# One thread: the models here are tiny, and on a busy 2-core machine two OpenMP threads that
# spin-wait for each other made the PPO test 10-40x slower (measured: 4 s vs 55 s).
torch.set_num_threads(1)


@pytest.fixture
def no_rlhf_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset every RLHF_ variable for the test (e.g. CI's RLHF_PROFILE=smoke), so a test that runs notebooks sets
    exactly the settings it means (with the same monkeypatch)."""
    for name in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def smoke_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{'data': smoke SST-2 folder, 'base': tiny GPT-2 + BPE tokenizer folder}, built once."""
    root = tmp_path_factory.mktemp("smoke")
    data = build_smoke_dataset(root / "data" / "sst2", **SMOKE_DATA_SIZES)
    base = build_base_model(root / "base_model", str(data), "smoke", seed=0)
    return {"data": data, "base": base}


@pytest.fixture(scope="session")
def smoke_rows() -> dict[str, list[dict]]:
    """The smoke SST-2 rows as Python dicts (the same data the smoke folder holds)."""
    return smoke_data.make_smoke_sst2(**SMOKE_DATA_SIZES, seed=0)


@pytest.fixture(scope="session")
def tokenizer(smoke_dirs: dict[str, Path]):
    """The smoke tokenizer, right padding (EOS doubles as pad, as in GPT-2)."""
    return ru.load_tokenizer(str(smoke_dirs["base"]), padding_side="right")


@pytest.fixture
def tiny_lm(smoke_dirs: dict[str, Path]) -> torch.nn.Module:
    """A fresh copy of the tiny GPT-2 LM (fp32, CPU, eval mode): tests may change it freely."""
    return ru.load_causal_lm(str(smoke_dirs["base"])).eval()


# ---------------------------------------------------------------------------
# Small shared inputs

MIXED_LENGTH_PROMPTS = [[5, 17, 3], [9], [40, 2, 8, 31, 12, 6], [7, 7], [23, 4, 19, 1], [11, 30, 2, 5, 5]]  # 1-6 tokens


def under_a_file(tmp_path: Path) -> str:
    """A folder path that cannot be created: its parent is a file."""
    (tmp_path / "a_file").write_text("not a folder")
    return str(tmp_path / "a_file" / "sub")


def give_freed_memory_back() -> None:
    """Return the memory freed so far to the system (glibc's malloc_trim), so the resident set is what is in use."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@pytest.fixture
def memory_given_back():
    """For a test that holds gigabytes: after it, the memory goes back to the system, so that later tests that
    measure the process's peak memory start from where they would without it."""
    yield
    give_freed_memory_back()


def read_without_outputs(path: Path):  # noqa: ANN201  (an nbformat NotebookNode)
    """A notebook as a fresh runtime starts it: the committed outputs (of the cpu-profile run) cleared, so that a
    test reads only what its own execution printed, even from cells it never reached."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb
