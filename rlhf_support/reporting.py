"""Reporting: the metric history, bounded progress bars, plots, saved figures, and showing a function's source."""

from __future__ import annotations

import contextlib
import inspect
import math
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

if typing.TYPE_CHECKING:  # for annotations only: these load when first used
    import matplotlib.pyplot as plt
    import pandas as pd


class History:
    """Namespaced scalars over steps (e.g. 'env/score_mean'), one row per logged step."""

    def __init__(self, rows: list[dict[str, float]] | None = None):
        self.rows: list[dict[str, float]] = rows or []

    def log(self, step: int, **scalars: float) -> None:
        """Record scalars for a step; keys are 'namespace/name' (pass as log(step, **{'a/b': 1.0}))."""
        self.rows.append({"step": step, **{k: float(v) for k, v in scalars.items()}})

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(steps, values) of one key, skipping rows that lack it."""
        pairs = [(r["step"], r[key]) for r in self.rows if key in r]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def last(self, key: str) -> float:
        """The latest value of a key."""
        return self.series(key)[1][-1]

    def to_frame(self) -> pd.DataFrame:
        """All rows as a DataFrame indexed by step."""
        import pandas as pd

        return pd.DataFrame(self.rows).set_index("step")


class _BoundedProgress(tqdm):
    """tqdm whose set_postfix waits for the next scheduled refresh instead of forcing one."""

    def set_postfix(self, ordered_dict: Mapping[str, Any] | None = None, refresh: bool = False, **kwargs: Any) -> None:
        super().set_postfix(ordered_dict, refresh=refresh, **kwargs)


def progress(iterable: Any = None, max_refreshes: int = 200, **kwargs: Any) -> tqdm:
    """A tqdm bar that renders in Jupyter, Colab and a terminal alike, and redraws at most `max_refreshes` times.

    In a notebook every redraw is a message from the kernel to the front end. A bar redrawn at every step of a
    long loop sends thousands while the cell runs, and a client that reads them only after the cell has
    finished (nbval does) finds its queue overflowed: the kernel's "idle" message is dropped and the cell
    "times out waiting for output". So the bar redraws every `total / max_refreshes` steps, at most twice a
    second, and a postfix (loss=...) waits for the next redraw.
    """
    total = kwargs.get("total", len(iterable) if hasattr(iterable, "__len__") else None)
    miniters = max(1, math.ceil((total - kwargs.get("initial", 0)) / max_refreshes)) if total else None
    return _BoundedProgress(
        iterable, dynamic_ncols=True, mininterval=0.5 if total else 2.0, miniters=miniters, **kwargs
    )


@contextlib.contextmanager
def library_bars_off() -> Iterator[None]:
    """The Hugging Face libraries' own progress bars off, for work of a second or two (reading a local dataset, writing
    a model's one shard): in a saved notebook each would leave a bar frozen at its first state. Restored afterwards."""
    import datasets
    from transformers.utils import logging as transformers_logging

    datasets_on, transformers_on = datasets.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if datasets_on:
            datasets.enable_progress_bars()
        if transformers_on:
            transformers_logging.enable_progress_bar()


def show_source(obj: Any) -> None:
    """Display the source code of a function or class (used where a notebook teaches it)."""
    source = inspect.getsource(obj)
    try:
        from IPython.display import Markdown, display

        display(Markdown(f"```python\n{source}```"))
    except ImportError:
        print(source)


def plot_history(
    history: History, keys: Sequence[str], title: str = "", ncols: int = 3, smooth: int = 1, xlabel: str = "step"
) -> plt.Figure:
    """One small plot per key, against the logged steps (named `xlabel`); `smooth` > 1 adds a moving average."""
    import matplotlib.pyplot as plt

    keys = [k for k in keys if history.series(k)[0]]
    nrows = max(1, math.ceil(len(keys) / ncols))
    fig, axes = plt.subplots(
        nrows, min(ncols, max(1, len(keys))), figsize=(4.2 * min(ncols, max(1, len(keys))), 3.0 * nrows), squeeze=False
    )
    for ax, key in zip(axes.flat, keys):
        steps, values = history.series(key)
        ax.plot(steps, values, lw=1, alpha=0.5 if smooth > 1 else 1.0)
        if smooth > 1 and len(values) >= smooth:
            kernel = np.ones(smooth) / smooth
            ax.plot(steps[smooth - 1 :], np.convolve(values, kernel, mode="valid"), lw=2)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_figure(fig: plt.Figure, figures_dir: str, name: str) -> Path | None:
    """Save `fig` as {figures_dir}/{name}.png when figures_dir is set (the cpu profile sets it); else do nothing.

    A figure that cannot be written is reported and skipped: it must never stop a notebook before its save cell.
    """
    if not figures_dir:
        return None
    path = Path(figures_dir) / f"{name}.png"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
    except OSError as error:
        print(
            f"Could not save the figure {path} ({error.strerror or error}); it is shown but not saved, and "
            "nothing else is affected. Set RLHF_FIGURES_DIR to a writable folder (or '' to save none)."
        )
        return None
    return path
