"""Be the human (notebook 2, section 10): the learner compares pairs of the SFT model's responses, one pair at a time,
with buttons; every choice is saved as it is made, and a restarted kernel picks up where it stopped.

The choices go to a journal, one JSON line per click (a label, or an undo), appended and flushed to disk at once: a
line is on disk whole or not at all, and appending never deletes a file (on Google Drive, a deleted or replaced file
goes to the Trash). A file that is not such a journal, or a journal of other pairs, is set aside with a message and a
fresh one begins; nothing is lost and nothing raises.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "rlhf-in-notebooks preference labels"
CHOICES = {"A": "A is better", "B": "B is better", "tie": "Can't tell"}


@dataclass(frozen=True)
class Pair:
    """Two responses to one prompt, as the learner sees them (A first)."""

    prompt: str
    a: str
    b: str


def pairs_fingerprint(pairs: Sequence[Pair]) -> str:
    """A short hash of the pairs' texts: a journal belongs to exactly these pairs."""
    digest = hashlib.sha256(json.dumps([[p.prompt, p.a, p.b] for p in pairs]).encode())
    return digest.hexdigest()[:16]


def labelling_queue(n_pairs: int, repeat_every: int = 6, gap: int = 4) -> list[tuple[int, bool]]:
    """The order the pairs are shown in: (pair index, shown swapped). After every `repeat_every` new pairs, one pair
    seen at least `gap` items earlier comes back with A and B swapped, to measure the learner's own consistency."""
    queue: list[tuple[int, bool]] = []
    repeated = 0
    for i in range(n_pairs):
        queue.append((i, False))
        if (i + 1) % repeat_every == 0 and repeated * repeat_every + 1 <= i + 1 - gap:
            queue.append((repeated * repeat_every, True))  # the first pair of an earlier block, swapped
            repeated += 1
    return queue


@dataclass
class LabelJournal:
    """The learner's choices, replayed from (and appended to) a JSON-lines file."""

    path: Path
    fingerprint: str
    labels: list[dict[str, Any]] = field(default_factory=list)  # one per labelled queue item, in order
    note: str = ""  # what loading found, for the learner (a file set aside, a broken last line)

    @classmethod
    def open(cls, path: str | Path, fingerprint: str) -> LabelJournal:
        """The journal at `path` for these pairs: replayed if it is one, set aside (with a note) if it is not."""
        journal = cls(Path(path), fingerprint)
        if not journal.path.exists():
            return journal
        lines = journal.path.read_text(errors="replace").splitlines()
        try:
            header = json.loads(lines[0]) if lines else None
        except json.JSONDecodeError:
            header = None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            return journal._set_aside("is not a label journal of this series")
        if header.get("pairs") != fingerprint:
            return journal._set_aside("holds labels of other pairs (another SFT model sampled them)")
        for number, line in enumerate(lines[1:], start=2):
            try:
                record = json.loads(line)
                if record["kind"] == "label":
                    assert record["choice"] in CHOICES and isinstance(record["item"], int)
                    journal.labels.append(record)
                elif record["kind"] == "undo":
                    if journal.labels:
                        journal.labels.pop()
                else:
                    raise ValueError(record["kind"])
            except (json.JSONDecodeError, KeyError, AssertionError, ValueError, TypeError):
                if number == len(lines):  # a line cut short when the runtime stopped mid-write
                    journal.note = f"The last line of {journal.path.name} was cut short and is skipped."
                    break
                return journal._set_aside(f"has an unreadable line {number}")
        return journal

    def _set_aside(self, why: str) -> LabelJournal:
        aside = self.path.with_name(f"{self.path.name}.set-aside-{time.strftime('%Y%m%d-%H%M%S')}")
        self.path.rename(aside)
        self.labels, self.note = (
            [],
            (
                f"{self.path} {why}: it was kept as {aside.name}, and a new journal starts here. Your labels there are "
                "not lost; they are not used."
            ),
        )
        return self

    def _append(self, record: dict[str, Any]) -> None:
        new = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            if new:
                f.write(json.dumps({"format": FORMAT, "version": 1, "pairs": self.fingerprint}) + "\n")
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())  # on disk before the next click

    def add(self, item: int, pair: int, swapped: bool, choice: str) -> None:
        """Record one choice ('A', 'B' or 'tie', for the pair as shown), saved at once."""
        record = {"kind": "label", "item": item, "pair": pair, "swapped": swapped, "choice": choice,
                  "time": round(time.time(), 1)}  # fmt: skip
        self._append(record)
        self.labels.append(record)

    def undo(self) -> dict[str, Any] | None:
        """Take back the last choice (saved at once); returns it, or None if there is none."""
        if not self.labels:
            return None
        self._append({"kind": "undo", "time": round(time.time(), 1)})
        return self.labels.pop()


def preferred(label: dict[str, Any]) -> int | None:
    """Which of the pair's own responses the learner preferred: 0 (its first), 1 (its second), None (can't tell)."""
    if label["choice"] == "tie":
        return None
    shown_first = label["choice"] == "A"
    return 0 if shown_first != label["swapped"] else 1


class Labeller:
    """The labelling widget (ipywidgets, as Colab's 7.7.1 supports it): one pair at a time, three choices, undo, a
    progress count, and batches of `batch` that "Label 20 more" extends without starting over."""

    def __init__(self, pairs: Sequence[Pair], journal: LabelJournal, batch: int = 20,
                 on_change: Callable[[], None] | None = None):  # fmt: skip
        import ipywidgets as widgets

        self.pairs, self.journal, self.batch, self.on_change = list(pairs), journal, batch, on_change
        self.queue = labelling_queue(len(self.pairs))
        self.goal = min(len(self.queue), len(journal.labels) + batch)  # this batch ends here
        self.progress, self.card, self.message = widgets.HTML(), widgets.HTML(), widgets.HTML()
        self.buttons = {key: widgets.Button(description=text) for key, text in CHOICES.items()}
        self.buttons["undo"] = widgets.Button(description="Undo")
        self.buttons["more"] = widgets.Button(description=f"Label {batch} more")
        for key in CHOICES:
            self.buttons[key].on_click(lambda _button, key=key: self.choose(key))
        self.buttons["undo"].on_click(lambda _button: self.undo())
        self.buttons["more"].on_click(lambda _button: self.more())
        row = [self.buttons[k] for k in (*CHOICES, "undo")]
        self.widget = widgets.VBox([self.progress, self.card, widgets.HBox(row), self.buttons["more"], self.message])
        self.show()

    @property
    def done(self) -> int:
        return len(self.journal.labels)

    def current(self) -> tuple[int, bool] | None:
        """The queue item shown now: (pair, swapped), or None when the batch (or the queue) is done."""
        return self.queue[self.done] if self.done < self.goal else None

    def choose(self, choice: str) -> None:
        item = self.current()
        if item is None:
            self.message.value = f"This batch is done: press <b>Label {self.batch} more</b> to go on."
            return
        self.journal.add(self.done, item[0], item[1], choice)
        self.message.value = ""
        self.show()

    def undo(self) -> None:
        taken = self.journal.undo()
        self.message.value = "Took back your last choice." if taken else "Nothing to undo."
        self.show()

    def more(self) -> None:
        self.goal = min(len(self.queue), max(self.goal, self.done) + self.batch)
        self.show()

    def show(self) -> None:
        self.progress.value = f"<b>{self.done}</b> labelled of {len(self.queue)} (this batch: up to {self.goal})" + (
            f" &middot; {self.journal.note}" if self.journal.note else ""
        )
        item = self.current()
        if item is None:
            self.card.value = "<i>Batch done.</i>" if self.done < len(self.queue) else "<i>All pairs labelled.</i>"
        else:
            pair = self.pairs[item[0]]
            a, b = (pair.b, pair.a) if item[1] else (pair.a, pair.b)
            self.card.value = (
                f"<p><b>prompt</b>: {_html(pair.prompt)} &hellip;</p><p><b>A</b>: &hellip;{_html(a)}</p>"
                f"<p><b>B</b>: &hellip;{_html(b)}</p><p>Which continuation would you rather read in a positive review?</p>"
            )
        for key in CHOICES:
            self.buttons[key].disabled = item is None
        if self.on_change is not None:
            self.on_change()


def _html(text: str) -> str:
    import html

    return html.escape(text) or "<i>(empty)</i>"


# -----------------------------------------------------------------------------
# Reading the labels


def simulated_labels(judge_scores: Sequence[tuple[float, float]], flip: float, seed: int = 0) -> list[int | None]:
    """A stand-in labeller for a run without clicks: per pair, the response the judge scores higher (0 or 1; None
    on a tie), with each choice flipped with probability `flip` (people disagree with themselves and each other)."""
    import random

    rng = random.Random(seed)
    labels: list[int | None] = []
    for first, second in judge_scores:
        if first == second:
            labels.append(None)
            continue
        choice = 0 if first > second else 1
        labels.append(1 - choice if rng.random() < flip else choice)
    return labels


def consistency(labels: Sequence[dict[str, Any]]) -> tuple[int, int]:
    """(agreeing, compared): among pairs labelled twice (once swapped), how often the two choices name the same
    response; a "can't tell" in either is left out."""
    first: dict[int, int | None] = {}
    agree = compared = 0
    for label in labels:
        choice = preferred(label)
        if label["swapped"] and label["pair"] in first:
            earlier = first[label["pair"]]
            if earlier is not None and choice is not None:
                compared += 1
                agree += earlier == choice
        elif not label["swapped"]:
            first[label["pair"]] = choice
    return agree, compared
