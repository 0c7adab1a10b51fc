"""The notebooks' exercises: every solution passes its check, every classic mistake fails it with its own hint, an
unfinished exercise is reported and never stops the notebook, and each notebook asks for what the exercise list says."""

from __future__ import annotations

import re

import nbformat
import pytest
import torch
from conftest import ROOT

import rlhf_utils as ru
from rlhf_support import exercises, solutions

NOTEBOOKS = {"1-SFT": "1-SFT.ipynb", "2-RM Training": "2-RM Training.ipynb", "3-RLHF": "3-RLHF.ipynb"}
MISTAKES = [(name, mistake) for name, exercise in exercises.EXERCISES.items() for mistake in exercise.mistakes]


@pytest.mark.parametrize("name", sorted(exercises.EXERCISES))
def test_each_solution_passes_its_check(name: str) -> None:
    result = ru.check_exercise(name, getattr(solutions, name))
    assert result.passed, result.message
    assert result.status == "correct"


@pytest.mark.parametrize(("name", "mistake"), MISTAKES, ids=[f"{n}-{m.name}" for n, m in MISTAKES])
def test_each_classic_mistake_fails_with_its_hint(name: str, mistake: exercises.Mistake) -> None:
    result = ru.check_exercise(name, mistake.fn)
    assert not result.passed
    assert result.mistake == mistake.name, result.message
    assert mistake.hint in result.message


@pytest.mark.parametrize("name", sorted(exercises.EXERCISES))
def test_an_unfinished_exercise_is_reported_not_raised(name: str) -> None:
    def unfinished(**inputs):  # noqa: ANN003, ANN202
        raise NotImplementedError

    result = ru.check_exercise(name, unfinished)
    assert result.status == "not done"
    assert "goes on with the tested version" in result.message and f"show_solution({name!r})" in result.message


def test_a_crashing_answer_is_reported_with_its_error() -> None:
    result = ru.check_exercise("compute_gae", lambda values, rewards, mask, gamma, lam: values @ values)
    assert result.status == "error" and "RuntimeError" in result.message


def test_an_unknown_wrong_answer_says_where_it_differs() -> None:
    # advantages = rewards: matches no listed mistake, so the check says which output differs, and where
    result = ru.check_exercise("compute_gae", lambda values, rewards, mask, gamma, lam: (rewards, rewards + values))
    assert result.status == "wrong" and result.mistake is None
    assert (
        "your advantages: it differs by up to" in result.message and "backwards over the real tokens" in result.message
    )


def test_a_wrong_shape_is_named() -> None:
    result = ru.check_exercise("score_at_last_token", lambda values, attention_mask: values)
    assert result.status == "wrong" and "its shape is (6, 7), the reference's (6,)" in result.message


def test_a_check_that_passes_needs_every_trial() -> None:
    # right on right-padded rows only: the left-padded rows of the random inputs catch it
    result = ru.check_exercise(
        "score_at_last_token",
        lambda values, attention_mask: values.gather(1, (attention_mask.sum(1) - 1)[:, None]).squeeze(1),
    )
    assert result.status == "wrong"


def test_the_label_check_uses_the_notebooks_pad_id() -> None:
    pad_id = 50256

    def labels_by_pad_id(input_ids, attention_mask):  # noqa: ANN001, ANN202  (the mistake, with the real pad id)
        return input_ids.masked_fill(input_ids == pad_id, -100)

    result = ru.check_exercise("lm_labels", labels_by_pad_id, pad_id=pad_id)
    assert result.mistake == "mask_by_token_id", result.message
    assert ru.check_exercise("lm_labels", solutions.lm_labels, pad_id=pad_id).passed


def test_the_solutions_match_the_tested_pieces_on_fresh_inputs() -> None:
    # beyond the checks' own seeds: other random batches, the reference functions directly
    generator = torch.Generator().manual_seed(1234)
    for name, reference in ru.exercise_references().items():
        exercise = exercises.EXERCISES[name]
        for _ in range(3):
            inputs = exercise.make_inputs(generator, {})
            got = exercises._as_outputs(getattr(solutions, name)(**exercises._copies(inputs)), len(exercise.outputs))
            want = exercises._as_outputs(reference(**exercises._copies(inputs)), len(exercise.outputs))
            assert all(exercises._same(g, w) for g, w in zip(got, want)), name


def test_show_solution_shows_the_source_and_names_the_exercises(monkeypatch: pytest.MonkeyPatch) -> None:
    import rlhf_support.reporting

    shown = []
    monkeypatch.setattr(rlhf_support.reporting, "show_source", shown.append)
    ru.show_solution("compute_gae")
    assert shown == [solutions.compute_gae]
    with pytest.raises(KeyError, match="the exercises are"):
        ru.show_solution("gea")


def _checked_names(notebook: str) -> list[str]:
    nb = nbformat.read(ROOT / notebook, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    return re.findall(r"ru\.check_exercise\(\s*\"(\w+)\"", code)


@pytest.mark.parametrize("notebook_name", sorted(NOTEBOOKS))
def test_each_notebook_checks_its_exercises(notebook_name: str) -> None:
    checked = _checked_names(NOTEBOOKS[notebook_name])
    listed = [name for name, exercise in exercises.EXERCISES.items() if exercise.notebook == notebook_name]
    assert sorted(checked) == sorted(listed)
    assert len(listed) >= 3
    code_exercises = [n for n in listed if n not in ("sft_probability", "probability_ratio")]
    assert len(code_exercises) >= 2


@pytest.mark.parametrize("notebook_name", sorted(NOTEBOOKS))
def test_the_committed_exercise_cells_are_unfinished_and_go_on(notebook_name: str) -> None:
    # each learner cell (tag "exercise") runs alone and leaves a stub; its check reports "not done"
    nb = nbformat.read(ROOT / NOTEBOOKS[notebook_name], as_version=4)
    cells = [c for c in nb.cells if "exercise" in c.metadata.get("tags", [])]
    assert len(cells) == len(_checked_names(NOTEBOOKS[notebook_name]))
    for cell in cells:
        namespace: dict = {"ru": ru, "torch": torch, "math": __import__("math")}
        exec(compile(cell.source, "exercise", "exec"), namespace)  # noqa: S102
        (fn_name,) = re.findall(r"^def (my_\w+)", cell.source, flags=re.M)
        (name,) = [n for n in exercises.EXERCISES if fn_name == f"my_{n}"]
        assert ru.check_exercise(name, namespace[fn_name]).status == "not done"
