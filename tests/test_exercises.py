"""The notebooks' exercises: every solution passes its check; every classic mistake fails it with its own hint, and
no two mistakes look alike on the check's inputs; the wrong answers a learner really writes get the right message;
the checks vary every setting and draw edge cases on purpose; and `Pieces` runs the learner's function in the
training once it passed, and falls back to the tested one, saying so, when it fails there."""

from __future__ import annotations

import contextlib
import itertools
import re

import nbformat
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT

import rlhf_utils as ru
from rlhf_support import exercises, solutions
from rlhf_support.exercises.engine import as_outputs, copies, same

NOTEBOOKS = {"1-SFT": "1-SFT.ipynb", "2-RM Training": "2-RM Training.ipynb", "3-RLHF": "3-RLHF.ipynb"}
MISTAKES = [(name, m, fn, hint) for name, ex in exercises.EXERCISES.items() for m, fn, hint in ex.mistakes()]


@pytest.mark.parametrize("name", sorted(exercises.EXERCISES))
def test_each_solution_passes_its_check(name: str) -> None:
    result = ru.check_exercise(name, getattr(solutions, name))
    assert result.passed and result.status == "correct", result.message


@pytest.mark.parametrize(("name", "mistake", "fn", "hint"), MISTAKES, ids=[f"{n}-{m}" for n, m, _, _ in MISTAKES])
def test_each_classic_mistake_fails_with_its_hint(name, mistake, fn, hint) -> None:  # noqa: ANN001
    result = ru.check_exercise(name, fn)
    assert result.status == "wrong" and result.mistake == mistake, result.message
    assert hint in result.message


@pytest.mark.parametrize("name", sorted(exercises.EXERCISES))
def test_the_checks_inputs_tell_every_mistake_apart(name: str) -> None:
    """A hint names the learner's mistake or none: each mistake differs from the answer, and from every other mistake,
    on at least one of the check's inputs (else two hints would fit one answer)."""
    exercise = exercises.EXERCISES[name]
    trials = exercise.trials({})
    count = len(exercise.outputs)

    def outputs(fn):  # noqa: ANN001, ANN202
        return [as_outputs(fn(**copies(t.inputs)), count) for t in trials]

    def alike(a, b) -> bool:  # noqa: ANN001
        return all(all(same(x, y, equal_nan=True) for x, y in zip(p, q)) for p, q in zip(a, b))

    made = {m: outputs(fn) for m, fn, _ in exercise.mistakes()}
    answer = outputs(getattr(ru, name) if exercise.trains else getattr(solutions, name))
    for m, out in made.items():
        assert not alike(out, answer), f"{name}: the mistake {m} gives the answer on every input"
    for a, b in itertools.combinations(made, 2):
        assert not alike(made[a], made[b]), f"{name}: {a} and {b} give the same outputs on every input"


def test_every_setting_a_function_takes_varies_across_the_inputs() -> None:
    for name, exercise in exercises.EXERCISES.items():
        trials = exercise.trials({})
        for key, value in trials[0].inputs.items():
            if isinstance(value, (int, float)) and key not in ("validation_loss", "score_gap"):
                assert len({t.inputs[key] for t in trials}) >= 2, f"{name}: {key} never changes"


@pytest.mark.parametrize(
    ("name", "edge"),
    [
        ("lm_labels", "without padding"), ("lm_labels", "all padding"), ("lm_labels", "one token"),
        ("causal_lm_loss", "without padding"), ("causal_lm_loss", "all padding"),
        ("score_at_last_token", "without padding"), ("score_at_last_token", "one real token"),
        ("compute_rewards", "one-token"), ("compute_rewards", "without padding"), ("compute_rewards", "no response"),
        ("compute_gae", "one-token"), ("compute_gae", "without padding"), ("compute_gae", "no response"),
        ("ppo_policy_loss", "one-token"), ("ppo_policy_loss", "without padding"),
        ("ppo_value_loss", "one-token"), ("ppo_value_loss", "without padding"),
        ("approx_kl", "one-token"), ("grpo_advantages", "tied group"), ("grpo_advantages", "one-token"),
        ("grpo_advantages", "without padding"),
    ],
)  # fmt: skip
def test_the_edge_cases_are_drawn_on_purpose(name: str, edge: str) -> None:
    labels = [t.label for t in exercises.EXERCISES[name].trials({})]
    assert any(edge in label for label in labels), labels


# ---------------------------------------------------------------------------
# Wrong answers written from scratch, as a learner writes them (not the listed mistakes' own code)


def test_a_clip_range_written_as_a_constant_is_caught() -> None:
    def constant_clip_loss(logprobs, old_logprobs, advantages, mask, clip_range):  # noqa: ANN001, ANN202
        ratio = torch.exp(logprobs - old_logprobs)
        objective = torch.min(ratio * advantages, torch.clamp(ratio, 0.8, 1.2) * advantages)
        return -(objective * mask).sum() / mask.sum()

    result = ru.check_exercise("ppo_policy_loss", constant_clip_loss)
    assert result.mistake == "fixed_clip_range" and "clip_range" in result.message


def test_grpo_without_its_epsilon_is_caught_on_a_tied_group() -> None:
    def grpo_without_eps(scores, rewards, mask, group_size, gamma):  # noqa: ANN001, ANN202
        groups = scores.view(-1, group_size)
        relative = ((groups - groups.mean(1, keepdim=True)) / groups.std(1, keepdim=True)).flatten()  # no 1e-4
        rewards = rewards.clone()
        last = mask.sum(1).long() - 1  # the responses are right-padded
        rewards[torch.arange(len(rewards)), last] += relative - scores
        advantages, running = torch.zeros_like(rewards), torch.zeros(len(rewards))
        for t in reversed(range(rewards.shape[1])):
            running = (rewards[:, t] + gamma * running) * mask[:, t]
            advantages[:, t] = running
        return advantages

    result = ru.check_exercise("grpo_advantages", grpo_without_eps)
    assert result.mistake == "no_eps" and "1e-4" in result.message, result.message


def test_labels_that_also_mask_position_0_name_position_0() -> None:
    def labels_masking_position_0(input_ids, attention_mask):  # noqa: ANN001, ANN202
        labels = torch.where(attention_mask.bool(), input_ids, torch.full_like(input_ids, -100))
        labels[:, 0] = -100  # "the first token has nothing before it"
        return labels

    result = ru.check_exercise("lm_labels", labels_masking_position_0, pad_id=0)
    assert result.mistake == "mask_first_token" and "position 0" in result.message


def test_dropping_the_eos_by_position_is_not_called_finding_padding_by_token_id() -> None:
    def labels_dropping_eos(input_ids, attention_mask):  # noqa: ANN001, ANN202
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        for row in range(len(labels)):
            real = attention_mask[row].nonzero().flatten()
            if len(real):
                labels[row, real[-1]] = -100  # "the EOS is not a word"
        return labels

    result = ru.check_exercise("lm_labels", labels_dropping_eos, pad_id=0)
    assert result.mistake == "drop_last_real_token", result.message
    assert "token id" not in result.message


def test_a_bradley_terry_loss_through_exp_is_told_that_exp_overflows() -> None:
    def bradley_terry_through_exp(chosen_scores, rejected_scores):  # noqa: ANN001, ANN202
        return torch.log1p(torch.exp(rejected_scores - chosen_scores)).mean()

    result = ru.check_exercise("pairwise_reward_loss", bradley_terry_through_exp)
    assert result.mistake == "exp_overflows" and "overflows" in result.message
    assert "underflow" not in result.message


def test_an_unknown_wrong_answer_says_where_it_differs_and_what_is_there() -> None:
    def labels_masking_position_1(input_ids, attention_mask):  # noqa: ANN001, ANN202
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        labels[:, 1] = -100  # matches no listed mistake
        return labels

    result = ru.check_exercise("lm_labels", labels_masking_position_1, pad_id=0)
    assert result.status == "wrong" and result.mistake is None
    assert re.search(r"at \[\d+, 1\] yours is -100, the answer \d+ \(a token: attention mask 1", result.message)
    assert "What is asked:" in result.message


def test_float_labels_are_told_to_keep_the_ids_dtype() -> None:
    result = ru.check_exercise(
        "lm_labels", lambda input_ids, attention_mask: solutions.lm_labels(input_ids, attention_mask).float()
    )
    assert result.status == "wrong" and "integers" in result.message


def test_an_unfinished_exercise_is_reported_not_raised() -> None:
    for name in exercises.EXERCISES:

        def unfinished(**inputs):  # noqa: ANN003, ANN202
            raise NotImplementedError

        result = ru.check_exercise(name, unfinished)
        assert result.status == "not done" and "goes on with the tested version" in result.message
        assert f"show_solution({name!r})" in result.message


def test_a_crashing_answer_is_reported_with_its_error_and_input() -> None:
    result = ru.check_exercise("compute_gae", lambda values, rewards, mask, gamma, lam: values @ values)
    assert result.status == "error" and "RuntimeError" in result.message and "random input 1" in result.message


def test_a_wrong_shape_is_named() -> None:
    result = ru.check_exercise("score_at_last_token", lambda values, attention_mask: values)
    assert result.status == "wrong" and re.search(r"its shape is \(\d+, \d+\), the answer's \(\d+,\)", result.message)


def test_a_loss_without_a_gradient_is_caught() -> None:
    def detached(logits, labels):  # noqa: ANN001, ANN202
        return torch.tensor(ru.causal_lm_loss(logits, labels).item())

    result = ru.check_exercise("causal_lm_loss", detached)
    assert result.status == "wrong" and "carries no gradient" in result.message


class MetaPrecision:
    """A stand-in for the training's precision on the meta device (which stands in for CUDA: mixing its tensors with
    CPU ones raises the same kind of error)."""

    dtype, name = None, "fp32"

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


def test_the_check_runs_on_the_trainings_device_and_catches_a_tensor_made_on_the_cpu() -> None:
    pieces = ru.pieces("3-RLHF", torch.device("meta"), MetaPrecision())

    def cpu_tensor_inside(values, rewards, mask, gamma, lam):  # noqa: ANN001, ANN202
        advantages, returns = solutions.compute_gae(values, rewards, mask, gamma, lam)
        return advantages + torch.zeros(values.shape), returns  # torch.zeros(...) is made on the CPU

    result = pieces.check("compute_gae", cpu_tensor_inside)
    assert result.status == "error" and "training's device (meta)" in result.message, result.message
    assert not pieces.uses_yours("compute_gae")
    assert pieces.check("compute_gae", ru.compute_gae).passed  # a function that makes nothing on the CPU passes


# ---------------------------------------------------------------------------
# Pieces: the training runs the learner's function once it passed; a failure in the training falls back


def batch(b: int = 4, t: int = 5) -> dict:
    generator = torch.Generator().manual_seed(0)
    mask = torch.ones(b, t)
    mask[-1, 3:] = 0
    return dict(values=torch.randn(b, t, generator=generator), rewards=torch.randn(b, t, generator=generator) * mask,
                mask=mask, gamma=1.0, lam=0.95)  # fmt: skip


def test_pieces_runs_the_learners_function_once_it_passes(capsys) -> None:  # noqa: ANN001
    calls = []

    def counted_gae(values, rewards, mask, gamma, lam):  # noqa: ANN001, ANN202
        calls.append(values.shape)
        return solutions.compute_gae(values, rewards, mask, gamma, lam)

    pieces = ru.pieces("3-RLHF")
    assert pieces.report().loc["compute_gae", "the training runs"] == "ru.compute_gae (tested)"
    assert pieces.check("compute_gae", counted_gae).passed
    calls.clear()
    advantages, returns = pieces.compute_gae(**batch())
    assert calls and torch.equal(advantages, ru.compute_gae(**batch())[0])
    assert pieces.report().loc["compute_gae", "the training runs"] == "yours"


@pytest.mark.parametrize("failure", ["raises", "nan", "shape"])
def test_a_learners_function_that_fails_inside_the_training_falls_back_and_says_so(failure, capsys) -> None:  # noqa: ANN001
    def passes_the_check_only(values, rewards, mask, gamma, lam):  # noqa: ANN001, ANN202
        advantages, returns = solutions.compute_gae(values, rewards, mask, gamma, lam)
        if values.shape[0] > 8:  # the check's batches are small; the training's are not
            if failure == "raises":
                raise IndexError("index 8 is out of bounds")
            if failure == "nan":
                advantages = advantages * float("nan")
            if failure == "shape":
                advantages = advantages.T
        return advantages, returns

    pieces = ru.pieces("3-RLHF")
    assert pieces.check("compute_gae", passes_the_check_only).passed
    small = pieces.compute_gae(**batch(4))
    assert torch.equal(small[0], ru.compute_gae(**batch(4))[0]) and pieces.uses_yours("compute_gae")
    big = pieces.compute_gae(**batch(16))  # inside "the training": the tested one answers instead
    assert torch.equal(big[0], ru.compute_gae(**batch(16))[0])
    said = capsys.readouterr().out
    assert "Your compute_gae (the exercise of section 3.5)" in said and "goes on with the tested" in said
    assert {"raises": "IndexError", "nan": "NaN", "shape": "shape"}[failure] in said
    assert not pieces.uses_yours("compute_gae")
    assert "took over" in pieces.report().loc["compute_gae", "why"]


def test_a_loss_piece_keeps_the_tested_statistics_beside_the_learners_loss() -> None:
    generator = torch.Generator().manual_seed(0)
    logprobs = torch.randn(3, 4, generator=generator).requires_grad_(True)
    old, advantages, mask = (
        torch.randn(3, 4, generator=generator),
        torch.randn(3, 4, generator=generator),
        torch.ones(3, 4),
    )
    pieces = ru.pieces("3-RLHF")
    assert pieces.check("ppo_policy_loss", solutions.ppo_policy_loss).passed
    loss, stats = pieces.ppo_policy_loss(logprobs, old, advantages, mask, 0.2)
    want, want_stats = ru.ppo_policy_loss(logprobs, old, advantages, mask, 0.2)
    assert torch.equal(loss, want) and loss.grad_fn is not None
    assert set(stats) == {"clipfrac", "approx_kl"} and all(torch.equal(stats[k], want_stats[k]) for k in stats)


def test_ppo_pieces_follow_the_estimator_with_the_learners_grpo_and_k3() -> None:
    cfg = ru.PPOConfig(advantage_estimator="grpo", samples_per_prompt=4, batch_size=8, minibatch_size=8,
                       require_cuda=False)  # fmt: skip
    pieces = ru.ppo_pieces(cfg)
    used = []

    def my_grpo(scores, rewards, mask, group_size, gamma):  # noqa: ANN001, ANN202
        used.append(group_size)
        return solutions.grpo_advantages(scores, rewards, mask, group_size, gamma)

    def my_k3(logprobs, old_logprobs, mask):  # noqa: ANN001, ANN202
        used.append("k3")
        return solutions.approx_kl(logprobs, old_logprobs, mask)

    assert pieces.check("grpo_advantages", my_grpo).passed and pieces.check("approx_kl", my_k3).passed
    used.clear()
    generator = torch.Generator().manual_seed(1)
    scores, mask = torch.randn(8, generator=generator), torch.ones(8, 3)
    rewards = ru.compute_rewards(scores, torch.zeros(8, 3), torch.zeros(8, 3), mask, 0.1)[0]
    advantages, _ = pieces.compute_advantages(scores, rewards, torch.zeros(8, 3), mask, 1.0, 0.95)
    assert used == [4] and torch.equal(advantages, ru.grpo_advantages(scores, rewards, mask, 4))
    logprobs = torch.randn(8, 3, generator=generator)
    loss, stats = pieces.ppo_policy_loss(logprobs, torch.zeros(8, 3), advantages, mask, 0.2)
    want, _ = ru.clipped_policy_loss(logprobs, torch.zeros(8, 3), advantages, mask, 0.2, "sequence", 24)
    assert torch.equal(loss, want) and "k3" in used  # GRPO's own average; the learner's k3 logged
    table = pieces.report()
    assert table.loc["grpo_advantages", "the training runs"] == "yours"
    assert table.loc["compute_gae", "the training runs"] == "not used: no critic"


# ---------------------------------------------------------------------------
# The notebooks: each exercise sits where its piece is taught, before any sight of its source


def _code_cells(notebook: str) -> list[str]:
    nb = nbformat.read(ROOT / notebook, as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code"]


def _checked_names(notebook: str) -> list[str]:
    return re.findall(r"pieces\.check\(\s*\"(\w+)\"", "\n".join(_code_cells(notebook)))


@pytest.mark.parametrize("notebook_name", sorted(NOTEBOOKS))
def test_each_notebook_checks_its_exercises(notebook_name: str) -> None:
    checked = _checked_names(NOTEBOOKS[notebook_name])
    listed = [name for name, exercise in exercises.EXERCISES.items() if exercise.notebook == notebook_name]
    assert sorted(checked) == sorted(listed) and len(listed) >= 3
    assert len([n for n in listed if exercises.EXERCISES[n].trains]) >= 2  # at least two that train


@pytest.mark.parametrize("notebook_name", sorted(NOTEBOOKS))
def test_no_exercised_function_is_shown_or_called_before_its_exercise(notebook_name: str) -> None:
    cells = _code_cells(NOTEBOOKS[notebook_name])
    for name in _checked_names(NOTEBOOKS[notebook_name]):
        checked_at = next(i for i, c in enumerate(cells) if f'pieces.check("{name}"' in c)
        before = "\n".join(cells[:checked_at])
        assert f"ru.{name}" not in before, f"{notebook_name}: ru.{name} appears before its exercise"
        shown_at = next((i for i, c in enumerate(cells) if f"show_source(ru.{name})" in c), None)
        if exercises.EXERCISES[name].trains:
            assert shown_at is not None and shown_at > checked_at, f"{name}: its source comes after the check"


@pytest.mark.parametrize("notebook_name", sorted(NOTEBOOKS))
def test_the_committed_exercise_cells_are_unfinished_and_go_on(notebook_name: str) -> None:
    nb = nbformat.read(ROOT / NOTEBOOKS[notebook_name], as_version=4)
    cells = [c for c in nb.cells if "exercise" in c.metadata.get("tags", [])]
    assert len(cells) == len(_checked_names(NOTEBOOKS[notebook_name]))
    for cell in cells:
        namespace: dict = {}
        exec(compile(cell.source, "exercise", "exec"), namespace)  # noqa: S102
        (fn_name,) = re.findall(r"^def (my_\w+)", cell.source, flags=re.M)
        assert ru.check_exercise(fn_name.removeprefix("my_"), namespace[fn_name]).status == "not done"


@pytest.mark.parametrize("notebook_name", sorted(NOTEBOOKS))
def test_each_training_calls_the_pieces_the_notebook_exercises(notebook_name: str) -> None:
    code = "\n".join(_code_cells(NOTEBOOKS[notebook_name]))
    for name in _checked_names(NOTEBOOKS[notebook_name]):
        if exercises.EXERCISES[name].trains and name not in ("grpo_advantages", "approx_kl", "compute_gae"):
            assert f"pieces.{name}(" in code, f"{notebook_name}: the training never calls pieces.{name}"
    assert "pieces.report()" in code  # which pieces are the learner's, printed before the training


def test_show_solution_shows_the_source_and_names_the_exercises(monkeypatch: pytest.MonkeyPatch) -> None:
    import rlhf_support.reporting

    shown = []
    monkeypatch.setattr(rlhf_support.reporting, "show_source", shown.append)
    ru.show_solution("compute_gae")
    assert shown == [solutions.compute_gae]
    with pytest.raises(KeyError, match="the exercises are"):
        ru.show_solution("gea")


def test_the_solutions_match_the_tested_pieces_bit_for_bit_where_the_training_compares_runs() -> None:
    """The notebooks' runs with the solutions injected are compared with the tested runs (test_notebooks): for notebook
    3's pieces the solutions compute the same floating-point operations, so the runs match exactly."""
    generator = torch.Generator().manual_seed(1234)
    for name in ("compute_rewards", "compute_gae", "ppo_value_loss", "approx_kl", "grpo_advantages", "lm_labels",
                 "score_at_last_token", "pairwise_reward_loss"):  # fmt: skip
        exercise = exercises.EXERCISES[name]
        for _ in range(3):
            inputs = exercise.random_inputs(generator, {})
            got = as_outputs(getattr(solutions, name)(**copies(inputs)), len(exercise.outputs))
            want = as_outputs(getattr(ru, name)(**copies(inputs)), len(exercise.outputs))
            assert all(torch.equal(torch.as_tensor(g), torch.as_tensor(w)) for g, w in zip(got, want)), name
    inputs = exercises.EXERCISES["ppo_policy_loss"].random_inputs(generator, {})
    assert torch.equal(solutions.ppo_policy_loss(**copies(inputs)), ru.ppo_policy_loss(**copies(inputs))[0])
    F.softplus  # noqa: B018  (imported for the learner-style answers above)
