"""How an exercise is checked: the learner's function against the tested one, on random inputs whose settings change
from trial to trial and on edge cases drawn on purpose, then once more on the training's device and precision.

A wrong answer is matched against the exercise's classic mistakes by what it computes on every trial: a hint names
the mistake the learner made, or none. Otherwise the check says which output differs, on which input, at which
positions, and what the two hold there. A check never raises: an unfinished exercise (NotImplementedError) is
reported as such, and the notebook goes on with the tested version.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

Inputs = dict[str, Any]

RANDOM_TRIALS = 4  # random inputs per check, besides the edge cases


def mistake(fn: Callable[..., Any]) -> staticmethod:
    """Mark a function in an Exercise class as a classic mistake: its docstring is the hint it earns."""
    fn.is_mistake = True  # type: ignore[attr-defined]
    return staticmethod(fn)


@dataclass(frozen=True)
class Trial:
    """One input of a check, and how the messages name it."""

    label: str
    inputs: Inputs


class Exercise:
    """One exercise: the function the learner writes, what it returns, its inputs, edge cases and mistakes.

    A subclass sets the class attributes, draws `random_inputs` (settings such as a clip range or a group size
    change from trial to trial), lists its `edge_cases`, and writes each classic mistake as a function marked
    `@mistake` with the learner's signature (and, if it needs them, the check's settings such as `pad_id`).
    """

    name = ""  # the tested function's name in rlhf_utils; the notebook's stub is my_<name>
    notebook = ""  # "1-SFT", "2-RM Training" or "3-RLHF"
    section = ""  # where the notebook teaches it, e.g. "1.2"
    asks_for = ""  # what the learner's function returns, in words
    outputs: tuple[str, ...] = ()  # the names of the compared outputs, in order
    rule = ""  # what is asked, said plainly: shown when a wrong answer matches no known mistake
    trains = True  # whether the notebook's training runs it (False: a formula, checked only)
    low_precision: tuple[str, ...] = ()  # inputs that arrive in the autocast dtype during training (e.g. logits)
    differentiable: tuple[str, ...] = ()  # inputs whose gradient the output must carry (the losses)
    tested_extras = False  # the tested function also returns statistics, which the training takes from it

    def random_inputs(self, rng: torch.Generator, settings: Mapping[str, Any]) -> Inputs:
        """One random input, with its settings drawn too."""
        raise NotImplementedError

    def edge_cases(self, rng: torch.Generator, settings: Mapping[str, Any]) -> dict[str, Inputs]:
        """Inputs that catch what random ones rarely do, by what they are ("a tied group", "a one-token response")."""
        return {}

    def describe(self, inputs: Inputs, output: str, index: tuple[int, ...]) -> str:
        """What the inputs hold at `index` of `output`, to say where an answer differs ("the sentence's EOS")."""
        return ""

    def shapes(self, inputs: Inputs) -> tuple[tuple[int, ...], ...]:
        """The shape of each output for these inputs (the training checks a learner's output against them)."""
        raise NotImplementedError

    @classmethod
    def mistakes(cls) -> list[tuple[str, Callable[..., Any], str]]:
        """(name, function, hint) of each classic mistake, in the order the class lists them."""
        found = []
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                fn = value.__func__ if isinstance(value, staticmethod) else None
                if fn is not None and getattr(fn, "is_mistake", False):
                    found.append((name, fn, " ".join((fn.__doc__ or "").split())))
        return found

    def trials(self, settings: Mapping[str, Any]) -> list[Trial]:
        """The inputs of one check: RANDOM_TRIALS random ones, then the edge cases; the same every time."""
        rng = torch.Generator().manual_seed(sum(map(ord, self.name)))
        trials = []
        for k in range(RANDOM_TRIALS):
            inputs = self.random_inputs(rng, settings)
            shown = ", ".join(f"{key}={value:g}" for key, value in inputs.items() if isinstance(value, (int, float)))
            trials.append(Trial(f"random input {k + 1}" + (f" ({shown})" if shown else ""), inputs))
        trials += [Trial(label, inputs) for label, inputs in self.edge_cases(rng, settings).items()]
        return trials


@dataclass(frozen=True)
class CheckResult:
    """What a check found: status is 'correct', 'not done', 'error' or 'wrong'; `mistake` names a known one."""

    exercise: str
    status: str
    message: str
    mistake: str | None = None

    @property
    def passed(self) -> bool:
        """Whether the learner's function matched the tested one on every input, and on the training's device."""
        return self.status == "correct"

    def __repr__(self) -> str:
        return self.message


# -----------------------------------------------------------------------------
# Comparing outputs


def as_outputs(value: Any, count: int) -> list[Any]:
    """The first `count` outputs of a function's return value, as a list (a lone value is one output)."""
    if isinstance(value, (tuple, list)):
        return list(value[:count])
    return [value]


def copies(
    inputs: Inputs, device: torch.device | None = None, dtype: Mapping[str, torch.dtype] | None = None
) -> Inputs:
    """Fresh copies of the inputs (no function sees another's in-place changes), on `device`, some in `dtype`."""
    out = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().clone()
            if device is not None:
                value = value.to(device)
            if dtype and key in dtype:
                value = value.to(dtype[key])
        out[key] = value
    return out


def _tensor(value: Any) -> torch.Tensor | None:
    """A number or tensor as a float64 CPU tensor (None if it is neither)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, torch.Tensor)):
        return None
    return torch.as_tensor(value).detach().to("cpu", torch.float64)


def same(a: Any, b: Any, rtol: float = 1e-4, atol: float = 1e-5, equal_nan: bool = False) -> bool:
    """Whether two outputs agree: the same shape, and values to float32 tolerance (inf only matches inf; NaN only
    matches NaN when equal_nan, as a mistake's NaN matches the learner's)."""
    a_, b_ = _tensor(a), _tensor(b)
    if a_ is None or b_ is None or a_.shape != b_.shape:
        return False
    if (
        isinstance(b, torch.Tensor)
        and not b.is_floating_point()
        and isinstance(a, torch.Tensor)
        and a.is_floating_point()
    ):
        return False  # token ids must stay integers
    return bool(torch.allclose(a_, b_, rtol=rtol, atol=atol, equal_nan=equal_nan))


def _number(x: float) -> str:
    return "NaN" if math.isnan(x) else ("inf" if x == math.inf else "-inf" if x == -math.inf else f"{x:.6g}")


def difference(exercise: Exercise, trial: Trial, output: str, got: Any, expected: Any) -> str:
    """Where and how `got` differs from `expected`, in words: the positions, what each holds, what is there."""
    g, e = _tensor(got), _tensor(expected)
    if g is None:
        kind = "tensor" if isinstance(expected, torch.Tensor) else "number"
        return f"it is a {type(got).__name__}, where a {kind} of shape {tuple(e.shape)} is expected"
    if g.shape != e.shape:
        return f"its shape is {tuple(g.shape)}, the answer's {tuple(e.shape)}"
    if isinstance(expected, torch.Tensor) and not expected.is_floating_point() and got.is_floating_point():
        return f"it holds {got.dtype} numbers, where the answer holds integers ({expected.dtype}): keep the ids' dtype"
    if g.dim() == 0:
        return f"it is {_number(float(g))}, the answer {_number(float(e))}"
    close = torch.isclose(g, e, rtol=1e-4, atol=1e-5)
    wrong = torch.nonzero(~close)
    parts = []
    for index in wrong[:3].tolist():
        index = tuple(index)
        where = "[" + ", ".join(map(str, index)) + "]"
        context = exercise.describe(trial.inputs, output, index)
        parts.append(
            f"at {where} yours is {_number(float(g[index]))}, the answer {_number(float(e[index]))}"
            + (f" ({context})" if context else "")
        )
    more = f"; {len(wrong) - 3} more positions differ" if len(wrong) > 3 else ""
    return "; ".join(parts) + more + f" ({len(wrong)} of {g.numel()} values differ)"


# -----------------------------------------------------------------------------
# The check


def _call(fn: Callable[..., Any], inputs: Inputs, extra: Mapping[str, Any] | None = None) -> Any:
    """fn(**inputs), plus those of `extra` that fn's signature names (a mistake may need the pad id)."""
    if extra:
        parameters = inspect.signature(fn).parameters
        inputs = {**inputs, **{k: v for k, v in extra.items() if k in parameters}}
    return fn(**inputs)


def _gradients(fn: Callable[..., Any], inputs: Inputs, names: Sequence[str]) -> list[torch.Tensor | None]:
    """d(first output)/d(input) for each named input (None where the output carries no gradient)."""
    inputs = copies(inputs)
    for name in names:
        inputs[name].requires_grad_(True)
    loss = as_outputs(fn(**inputs), 1)[0]
    if not isinstance(loss, torch.Tensor) or loss.grad_fn is None:
        return [None for _ in names]
    grads = torch.autograd.grad(loss, [inputs[n] for n in names], allow_unused=True)
    return list(grads)


def _outputs_of(fn: Callable[..., Any], trials: Sequence[Trial], count: int, extra: Mapping[str, Any]) -> Iterator:
    """Each trial's outputs of fn, or None where fn raised."""
    for trial in trials:
        try:
            yield as_outputs(_call(fn, copies(trial.inputs), extra), count)
        except Exception:  # noqa: BLE001  (a mistake that cannot handle an edge case does not match it)
            yield None


def check(
    exercise: Exercise,
    fn: Callable[..., Any],
    reference: Callable[..., Any],
    settings: Mapping[str, Any] | None = None,
    device: torch.device | None = None,
    precision: Any = None,
) -> CheckResult:
    """Compare the learner's `fn` with `reference` on every trial of `exercise` (and on `device` under `precision`'s
    autocast, when that is not the CPU in fp32); never raises."""
    settings = dict(settings or {})
    name = exercise.name
    fallback = f"The training goes on with the tested version. `ru.show_solution({name!r})` shows one answer."
    count = len(exercise.outputs)
    trials = exercise.trials(settings)
    results = []
    for trial in trials:
        try:
            got = as_outputs(fn(**copies(trial.inputs)), count)
        except NotImplementedError:
            return CheckResult(name, "not done", f"Exercise {name!r} is not done yet. {fallback}")
        except Exception as error:  # noqa: BLE001  (a learner's code may raise anything: report it, go on)
            return CheckResult(
                name, "error", f"On {trial.label}, your function raised {type(error).__name__}: {error}. {fallback}"
            )
        if len(got) < count:
            return CheckResult(
                name, "wrong", f"Not yet: return {exercise.asks_for}; yours returned {len(got)} value(s). {fallback}"
            )
        results.append((trial, got, as_outputs(reference(**copies(trial.inputs)), count)))
    wrong = [(trial, got, want) for trial, got, want in results if not all(map(same, got, want))]
    if wrong:
        for mistake_name, mistaken, hint in exercise.mistakes():
            made = list(_outputs_of(mistaken, trials, count, settings))
            if all(
                m is not None and all(same(g, x, equal_nan=True) for g, x in zip(got, m))
                for (_, got, _), m in zip(results, made)
            ):
                return CheckResult(name, "wrong", f"Not yet: {hint} {fallback}", mistake_name)
        trial, got, want = wrong[0]
        k = next(i for i, (g, w) in enumerate(zip(got, want)) if not same(g, w))
        return CheckResult(
            name,
            "wrong",
            f"Not yet: on {trial.label}, your {exercise.outputs[k]}: "
            f"{difference(exercise, trial, exercise.outputs[k], got[k], want[k])}. What is asked: {exercise.rule} "
            f"{fallback}",
        )
    if exercise.differentiable:
        trial = trials[0]
        mine, tested = (
            _gradients(fn, trial.inputs, exercise.differentiable),
            _gradients(reference, trial.inputs, exercise.differentiable),
        )
        for input_name, g, t in zip(exercise.differentiable, mine, tested):
            if g is None and t is not None:
                return CheckResult(
                    name,
                    "wrong",
                    f"Not yet: your {exercise.outputs[0]} has the right value but carries no gradient to "
                    f"`{input_name}`, so training would not move the model: compute it from the inputs with torch "
                    f"operations (no .item(), float() or torch.tensor(...) on the way). {fallback}",
                )
            if t is not None and not same(g, t):
                return CheckResult(
                    name,
                    "wrong",
                    f"Not yet: your {exercise.outputs[0]} has the right value, but its gradient with respect to "
                    f"`{input_name}` differs from the answer's ({difference(exercise, trial, input_name, g, t)}): "
                    f"something in it is detached or counted twice. {fallback}",
                )
    where = _on_the_training_device(exercise, fn, reference, trials[0], device, precision)
    if where is not None:
        return CheckResult(name, "error", f"{where} {fallback}")
    trained = " From here on the training uses yours." if exercise.trains else ""
    return CheckResult(
        name, "correct", f"Correct: your {name} matches the tested one on all {len(trials)} inputs.{trained}"
    )


def _on_the_training_device(
    exercise: Exercise,
    fn: Callable[..., Any],
    reference: Callable[..., Any],
    trial: Trial,
    device: torch.device | None,
    precision: Any,
) -> str | None:
    """Run one trial as the training will, on its device and under its autocast; a message if that fails."""
    dtype = getattr(precision, "dtype", None)
    if device is None or (torch.device(device).type == "cpu" and dtype is None):
        return None
    device = torch.device(device)
    how = f"{device.type}" + (f", {precision.name} autocast" if dtype is not None else "")
    low = {name: dtype for name in exercise.low_precision} if dtype is not None else None
    autocast = precision.autocast() if precision is not None else torch.autocast(device.type, enabled=False)
    count = len(exercise.outputs)
    try:
        with autocast:
            got = as_outputs(fn(**copies(trial.inputs, device, low)), count)
            want = as_outputs(reference(**copies(trial.inputs, device, low)), count)
    except Exception as error:  # noqa: BLE001
        return (
            f"Not yet: on the training's device ({how}) your function raised {type(error).__name__}: {error}. "
            "Make every new tensor where the inputs are: torch.zeros_like(x), x.new_zeros(...), or device=x.device."
        )
    for output, g, w in zip(exercise.outputs, got, want):
        if isinstance(w, torch.Tensor) and (not isinstance(g, torch.Tensor) or g.device != w.device):
            where = g.device if isinstance(g, torch.Tensor) else type(g).__name__
            return (
                f"Not yet: on the training's device ({how}) your {output} comes back on {where}, not on "
                f"{w.device}: build it from the inputs (torch.zeros_like(x), x.new_zeros(...), device=x.device)."
            )
        if isinstance(w, torch.Tensor) and w.device.type == "meta":  # no values to compare: where, and the shape
            if tuple(g.shape) != tuple(w.shape):
                return f"Not yet: on the training's device ({how}) your {output} has shape {tuple(g.shape)}."
            continue
        if not same(g, w, rtol=2e-2, atol=2e-2):
            return f"Not yet: on the training's device ({how}) your {output} differs from the answer: " + difference(
                exercise, trial, output, g, w
            )
    return None
