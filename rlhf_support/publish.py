"""Preparing an executed notebook for the repository: progress bars as their final text.

In a live Jupyter or Colab front end tqdm draws its bars as widgets. A saved notebook keeps each bar's widget state
in its metadata, but GitHub and nbconvert cannot render widgets: they show the bar's text form as it was when the bar
was *created*, a frozen "0%| | 0/1053". `bars_as_text` replaces each bar by the text of its last state (read from the
saved widget state) and drops the widget metadata, so every reader sees where each loop ended.

    python -m rlhf_support.publish 1-SFT.ipynb "2-RM Training.ipynb" 3-RLHF.ipynb
"""

from __future__ import annotations

import html
import json
import sys
from pathlib import Path
from typing import Any

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
BAR_WIDTH = 10  # characters of the drawn bar, as tqdm's text bar in a notebook's fallback


def _bar_text(model_id: str, state: dict[str, Any]) -> str | None:
    """The text of a tqdm widget (an HBox of prefix, progress bar, suffix) in its saved state, or None."""
    box = state.get(model_id)
    if not box or box.get("model_name") != "HBoxModel":
        return None
    parts = [state.get(child.removeprefix("IPY_MODEL_"), {}) for child in box["state"].get("children", [])]
    if len(parts) != 3 or parts[1].get("model_name") != "FloatProgressModel":
        return None
    prefix, progress, suffix = (html.unescape(p["state"].get("value", "")) if p is not parts[1] else p for p in parts)
    value, total = float(progress["state"].get("value", 0)), float(progress["state"].get("max", 0) or 0)
    filled = round(BAR_WIDTH * min(1.0, value / total)) if total > 0 else 0
    bar = "█" * filled + " " * (BAR_WIDTH - filled)
    return (prefix + "|" + bar + "|" + suffix).replace("\u2007", " ")


def bars_as_text(notebook: dict[str, Any]) -> int:
    """Replace every widget output of `notebook` (a dict, as json.load reads it): a progress bar by the text of its
    saved final state (a stream on stderr, as tqdm writes in a terminal), any other widget by a note that it is
    interactive; drop the widget state. Returns how many it replaced."""
    state = notebook.get("metadata", {}).pop("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    replaced = 0
    for cell in notebook.get("cells", []):
        outputs = []
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(WIDGET_VIEW)
            if view is None:
                outputs.append(output)
                continue
            bar = _bar_text(view["model_id"], state)
            if bar is not None:
                outputs.append({"name": "stderr", "output_type": "stream", "text": bar + "\n"})
            else:  # another widget (the labelling buttons of notebook 2): no state to show in a saved copy
                note = "[an interactive widget: run the notebook to use it]"
                outputs.append({"output_type": "display_data", "metadata": {}, "data": {"text/plain": note}})
            replaced += 1
        if "outputs" in cell:
            cell["outputs"] = outputs
    return replaced


def publish(path: str | Path) -> int:
    """`bars_as_text` on the notebook file at `path`, in place; returns how many bars it replaced."""
    path = Path(path)
    notebook = json.loads(path.read_text())
    replaced = bars_as_text(notebook)
    path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
    return replaced


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(f"{name}: {publish(name)} progress bars written as their final text")
