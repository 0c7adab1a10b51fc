"""The notebooks' tagged cells, read as code: the tests and the benchmark run the PPO loop that notebook 3 teaches
(the cell tagged "ppo-loop"), not a copy of it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def tagged_cell(notebook: str | Path, tag: str) -> str:
    """The source of the one code cell of `notebook` whose metadata carries `tag`."""
    cells = [c for c in json.loads(Path(notebook).read_text())["cells"] if tag in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{notebook} has {len(cells)} cells tagged {tag!r}; expected one.")
    return "".join(cells[0]["source"])


def run_tagged_cell(notebook: str | Path, tag: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """Execute that cell in `namespace` (the variables the notebook's earlier cells define); returns the namespace."""
    code = compile(tagged_cell(notebook, tag), f"{Path(notebook).name}[{tag}]", "exec")
    exec(code, namespace)  # noqa: S102  (the project's own notebook, as the notebook itself runs it)
    return namespace
