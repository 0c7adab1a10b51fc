"""Committed notebooks show where each progress bar ended, not a frozen "0%": `rlhf_support.publish` writes each bar's
final state (from the widget state a saved notebook keeps) as text, and any other widget as a note."""

from __future__ import annotations

import json

from rlhf_support.publish import WIDGET_STATE, WIDGET_VIEW, bars_as_text


def widget_notebook(bar_value: float, bar_max: float) -> dict:
    """A notebook as nbconvert saves it: one cell with a tqdm widget (prefix, bar, suffix) and one with a button."""

    def model(name: str, **state: object) -> dict:
        return {"model_name": name, "state": state}

    state = {
        "box": model("HBoxModel", children=["IPY_MODEL_pre", "IPY_MODEL_bar", "IPY_MODEL_post"]),
        "pre": model("HTMLModel", value="SFT:\u2007100%"),
        "bar": model("FloatProgressModel", value=bar_value, max=bar_max),
        "post": model("HTMLModel", value="\u20071053/1053\u2007[01:23&lt;00:00,\u200712.6it/s,\u2007loss=5.501]"),
        "button": model("ButtonModel", description="A is better"),
    }

    def view(model_id: str, fallback: str) -> dict:
        data = {WIDGET_VIEW: {"model_id": model_id, "version_major": 2, "version_minor": 0}, "text/plain": [fallback]}
        return {"output_type": "display_data", "metadata": {}, "data": data}

    return {
        "metadata": {"widgets": {WIDGET_STATE: {"state": state}}},
        "cells": [
            {"cell_type": "code", "outputs": [view("box", "SFT:   0%|          | 0/1053 [00:00<?, ?it/s]")]},
            {"cell_type": "code", "outputs": [view("button", "Button(description='A is better')")]},
        ],
    }


def test_a_bar_is_written_as_its_final_text_and_other_widgets_as_a_note() -> None:
    notebook = widget_notebook(1053.0, 1053.0)
    assert bars_as_text(notebook) == 2
    bar, button = (cell["outputs"][0] for cell in notebook["cells"])
    assert bar["output_type"] == "stream" and bar["text"] == (
        "SFT: 100%|██████████| 1053/1053 [01:23<00:00, 12.6it/s, loss=5.501]\n"
    )
    assert "interactive widget" in button["data"]["text/plain"]
    assert "widgets" not in notebook["metadata"] and WIDGET_VIEW not in json.dumps(notebook)


def test_a_bar_stopped_half_way_shows_half_a_bar() -> None:
    notebook = widget_notebook(500.0, 1000.0)
    bars_as_text(notebook)
    assert "|█████     |" in notebook["cells"][0]["outputs"][0]["text"]
