"""The teaching core reads in the notebooks' order: each top-level function and class of rlhf_utils.py sits where the
notebooks (1, then 2, then 3, cell by cell) first use it as `ru.<name>`, and a helper the notebooks never call sits
before its first user in the file. The checker itself is tested on made-up modules, so that it can fail."""

from __future__ import annotations

import ast
import json
import random
import re
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("1-SFT.ipynb", "2-RM Training.ipynb", "3-RLHF.ipynb")  # the order a learner reads them
USE = re.compile(r"\bru\.([A-Za-z_]\w*)")


def first_uses(code_cells: Iterable[str]) -> dict[str, int]:
    """name -> the rank of its first `ru.<name>` in the cells, read in order."""
    first: dict[str, int] = {}
    for cell in code_cells:
        for match in USE.finditer(cell):
            first.setdefault(match.group(1), len(first))
    return first


def notebook_code_cells() -> list[str]:
    """The code cells of the three notebooks, notebook 1's first, each in cell order."""
    return [
        "".join(cell["source"])
        for name in NOTEBOOKS
        for cell in json.loads((ROOT / name).read_text())["cells"]
        if cell["cell_type"] == "code"
    ]


def top_level_defs(source: str) -> list[tuple[str, set[str]]]:
    """The module's top-level functions and classes in file order, each with the names its code reads."""
    return [
        (node.name, {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} - {node.name})
        for node in ast.parse(source).body
        if isinstance(node, (ast.FunctionDef, ast.ClassDef))
    ]


def order_problems(defs: list[tuple[str, set[str]]], first: dict[str, int]) -> list[str]:
    """What breaks the notebooks' order: a called definition after one the notebooks use later, or a helper (never
    called by the notebooks) defined after a definition that uses it. [] when the module reads in order."""
    problems = []
    called = [name for name, _ in defs if name in first]
    for before, after in zip(called, called[1:]):
        if first[before] > first[after]:
            problems.append(f"{after} is first used before {before} in the notebooks, but defined after it")
    for position, (name, _) in enumerate(defs):
        users = [i for i, (_, reads) in enumerate(defs) if name in reads]
        if name not in first and users and min(users) < position:
            problems.append(f"the helper {name} is defined after its first user, {defs[min(users)][0]}")
    return problems


def test_the_core_reads_in_the_order_the_notebooks_call_it():
    defs = top_level_defs((ROOT / "rlhf_utils.py").read_text())
    first = first_uses(notebook_code_cells())
    assert sum(name in first for name, _ in defs) >= 40, "the notebooks call most of the core as ru.<name>"
    assert order_problems(defs, first) == []


def test_the_order_check_fails_on_a_shuffled_core():
    defs = top_level_defs((ROOT / "rlhf_utils.py").read_text())
    first = first_uses(notebook_code_cells())
    shuffled = defs[:]
    random.Random(0).shuffle(shuffled)
    assert order_problems(shuffled, first)
    called = [i for i, (name, _) in enumerate(defs) if name in first]
    swapped = defs[:]
    swapped[called[3]], swapped[called[4]] = swapped[called[4]], swapped[called[3]]  # two neighbours swapped
    earlier, later = defs[called[3]][0], defs[called[4]][0]
    assert f"{earlier} is first used before {later} in the notebooks, but defined after it" in order_problems(
        swapped, first
    )


MODULE = """
def helper(x):
    return x + 1


def taught_first(x):
    return helper(x)


class TaughtSecond:
    def run(self, x):
        return taught_first(x)
"""


def test_the_order_check_names_a_late_definition_and_a_late_helper():
    first = first_uses(["ru.taught_first(1)\nru.show_source(ru.taught_first)", "obj = ru.TaughtSecond()"])
    assert first == {"taught_first": 0, "show_source": 1, "TaughtSecond": 2}
    assert order_problems(top_level_defs(MODULE), first) == []
    first_swapped = first_uses(["ru.TaughtSecond()", "ru.taught_first(1)"])
    assert order_problems(top_level_defs(MODULE), first_swapped) == [
        "TaughtSecond is first used before taught_first in the notebooks, but defined after it"
    ]
    helper_last = MODULE.replace("def helper(x):\n    return x + 1\n", "") + "\n\ndef helper(x):\n    return x + 1\n"
    assert order_problems(top_level_defs(helper_last), first) == [
        "the helper helper is defined after its first user, taught_first"
    ]


def inner_function_names(source: str) -> list[str]:
    """The names of the functions defined inside functions (not methods), each occurrence."""
    names = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            is_function = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if is_function and in_function:
                names.append(child.name)
            visit(child, is_function or (in_function and not isinstance(child, ast.ClassDef)))

    visit(ast.parse(source), False)
    return names


def test_no_file_defines_two_inner_functions_of_one_name():
    files = [ROOT / "rlhf_utils.py", *(ROOT / "rlhf_support").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")]
    files += list((ROOT / "tests").glob("*.py"))
    for path in files:
        names = inner_function_names(path.read_text())
        assert len(names) == len(set(names)), f"{path.name}: {sorted(n for n in set(names) if names.count(n) > 1)}"
    assert inner_function_names("def f():\n    def g(): ...\n\ndef h():\n    def g(): ...\n") == ["g", "g"]
