"""Be the human (notebook 2, section 10): the labelling widget's buttons, driven as a learner clicks them; every choice
saved as it is made; undo; "label 20 more"; the journal replayed after a kernel restart; a corrupt or foreign file
set aside with a message; the simulated labeller and the consistency count."""

from __future__ import annotations

import json

import pytest

import rlhf_utils as ru
from rlhf_support.labelling import FORMAT, labelling_queue

PAIRS = [ru.Pair(f"prompt {i}", f"first {i}", f"second {i}") for i in range(30)]


def journal_lines(path) -> list[dict]:  # noqa: ANN001
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_click_is_saved_at_once_and_undo_takes_it_back(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "my_labels.jsonl"
    labeller = ru.Labeller(PAIRS, ru.LabelJournal.open(path, ru.pairs_fingerprint(PAIRS)))
    assert "prompt 0" in labeller.card.value and "0</b> labelled" in labeller.progress.value
    labeller.buttons["A"].click()
    assert journal_lines(path)[0]["format"] == FORMAT and journal_lines(path)[-1]["choice"] == "A"  # on disk now
    labeller.buttons["B"].click()
    labeller.buttons["tie"].click()
    assert [r["choice"] for r in journal_lines(path) if r.get("kind") == "label"] == ["A", "B", "tie"]
    labeller.buttons["undo"].click()
    assert journal_lines(path)[-1].get("kind") == "undo" and labeller.done == 2
    assert "prompt 2" in labeller.card.value  # the undone pair is shown again
    assert "Took back" in labeller.message.value


def test_a_batch_ends_and_label_20_more_goes_on_without_starting_over(tmp_path) -> None:  # noqa: ANN001
    labeller = ru.Labeller(PAIRS, ru.LabelJournal.open(tmp_path / "l.jsonl", ru.pairs_fingerprint(PAIRS)), batch=5)
    for _ in range(5):
        labeller.buttons["A"].click()
    assert labeller.current() is None and labeller.buttons["A"].disabled
    labeller.buttons["A"].click()  # a click past the batch's end records nothing
    assert labeller.done == 5 and "Label 5 more" in labeller.message.value
    labeller.buttons["more"].click()
    assert labeller.current() is not None and not labeller.buttons["A"].disabled
    labeller.buttons["B"].click()
    assert labeller.done == 6 and labeller.goal == 10


def test_a_restarted_kernel_resumes_from_the_saved_journal(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "l.jsonl"
    first = ru.Labeller(PAIRS, ru.LabelJournal.open(path, ru.pairs_fingerprint(PAIRS)))
    for key in ("A", "B", "A", "undo", "tie"):
        first.buttons[key].click()
    again = ru.Labeller(PAIRS, ru.LabelJournal.open(path, ru.pairs_fingerprint(PAIRS)))  # a new kernel, the same file
    assert [r["choice"] for r in again.journal.labels] == ["A", "B", "tie"]
    assert again.current() == first.current() and again.journal.note == ""


@pytest.mark.parametrize("content", ["not json at all\n", json.dumps({"format": "something else"}) + "\n", "\x00\x01"])
def test_a_corrupt_or_foreign_file_is_set_aside_with_a_message(tmp_path, content: str) -> None:
    path = tmp_path / "l.jsonl"
    path.write_text(content)
    journal = ru.LabelJournal.open(path, ru.pairs_fingerprint(PAIRS))
    assert journal.labels == [] and "set-aside" in journal.note and "not lost" in journal.note
    assert not path.exists() and len(list(tmp_path.glob("l.jsonl.set-aside-*"))) == 1  # kept, beside
    labeller = ru.Labeller(PAIRS, journal)
    labeller.buttons["A"].click()
    assert journal_lines(path)[0]["format"] == FORMAT  # a fresh journal
    assert "set-aside" in labeller.progress.value  # the learner is told


def test_labels_of_other_pairs_are_set_aside_and_a_cut_last_line_is_skipped(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "l.jsonl"
    labeller = ru.Labeller(PAIRS, ru.LabelJournal.open(path, ru.pairs_fingerprint(PAIRS)))
    labeller.buttons["A"].click()
    labeller.buttons["B"].click()
    with open(path, "a") as f:
        f.write('{"kind": "label", "ite')  # the runtime stopped in the middle of a write
    journal = ru.LabelJournal.open(path, ru.pairs_fingerprint(PAIRS))
    assert [r["choice"] for r in journal.labels] == ["A", "B"] and "cut short" in journal.note
    other = ru.LabelJournal.open(path, ru.pairs_fingerprint(PAIRS[::-1]))  # another SFT model, other pairs
    assert other.labels == [] and "other pairs" in other.note


def test_the_queue_repeats_earlier_pairs_swapped_and_consistency_counts_them() -> None:
    queue = labelling_queue(24)
    repeats = [(i, k) for k, (i, swapped) in enumerate(queue) if swapped]
    assert len(repeats) == 4 and all(queue.index((i, False)) < k for i, k in repeats)
    # a labeller who always picks the pair's first response is consistent; one who always clicks "A" is not
    by_pair = [{"pair": i, "swapped": s, "choice": "B" if s else "A"} for i, s in queue]
    by_position = [{"pair": i, "swapped": s, "choice": "A"} for i, s in queue]
    assert ru.label_consistency(by_pair) == (4, 4) and ru.label_consistency(by_position) == (0, 4)
    assert [ru.preferred(x) for x in by_pair] == [0] * len(queue)


def test_the_simulated_labeller_follows_the_judge_with_the_flips_asked_for() -> None:
    scores = [(0.9, 0.1)] * 2000 + [(0.3, 0.3)] * 10
    labels = ru.simulated_labels(scores, flip=0.2, seed=0)
    assert labels[-10:] == [None] * 10  # equal scores: "can't tell"
    flipped = sum(label == 1 for label in labels[:2000]) / 2000
    assert 0.17 < flipped < 0.23
    assert ru.simulated_labels(scores, flip=0.0) == [0] * 2000 + [None] * 10
