"""Data: SST-2 from local files and its schema errors, tokenising, padding, labels, batches, prompts, preference
pairs, and the smoke data."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest
import torch

import rlhf_utils as ru
from rlhf_support import smoke_data
from rlhf_support.data import validate_sst2
from rlhf_support.errors import DatasetSchemaError

# ---------------------------------------------------------------------------
# Batches for evaluation


def test_length_grouped_batches_for_evaluation_are_sorted_and_complete():
    rng = random.Random(0)
    lengths = [rng.randint(1, 30) for _ in range(103)]
    batches = ru.length_grouped_batches(lengths, 10, shuffle=False)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(103))
    assert [lengths[i] for i in flat] == sorted(lengths)
    assert len(ru.length_grouped_batches(lengths, 10, shuffle=False, drop_last=True)) == 10


# ---------------------------------------------------------------------------
# SST-2 from local files, its schema, tokenising, padding, labels, batches, prompts, pairs, the smoke data


ROOT = Path(__file__).resolve().parents[1]


ROWS = {
    "train": [
        {"sentence": "a gem ", "label": 1},
        {"sentence": "dull ", "label": 0},
        {"sentence": "it 's a mess ", "label": 0},
    ],
    "validation": [{"sentence": "charming ", "label": 1}, {"sentence": "a slog ", "label": 0}],
}


def write_split(folder, split, rows, fmt):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{split}.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "csv":
        pd.DataFrame(rows, columns=list(rows[0]) if rows else ["sentence", "label"]).to_csv(path, index=False)
    else:
        pd.DataFrame(rows, columns=list(rows[0]) if rows else ["sentence", "label"]).to_parquet(path)
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_load_sst2_from_local_files(tmp_path, fmt):
    for split, rows in ROWS.items():
        write_split(tmp_path, split, rows, fmt)
    dataset = ru.load_sst2(str(tmp_path))
    for split, rows in ROWS.items():
        assert dataset[split]["sentence"] == [r["sentence"] for r in rows]
        assert dataset[split]["label"] == [r["label"] for r in rows]


def test_load_sst2_reads_the_smoke_folder(smoke_dirs, smoke_rows):
    dataset = ru.load_sst2(str(smoke_dirs["data"]))
    assert dataset["validation"]["sentence"] == [r["sentence"] for r in smoke_rows["validation"]]


def broken(tmp_path, **splits):
    """Write each split given as (rows, fmt); returns the folder."""
    for split, (rows, fmt) in splits.items():
        write_split(tmp_path, split, rows, fmt)
    return tmp_path


@pytest.mark.parametrize(
    "make,pattern",
    [
        (lambda p: broken(p, train=(ROWS["train"], "jsonl")), r"no 'validation' file"),
        (
            lambda p: broken(
                p,
                train=([{"text": "a gem ", "label": 1}], "jsonl"),
                validation=([{"text": "dull ", "label": 0}], "jsonl"),
            ),
            r"no 'sentence' column",
        ),
        (
            lambda p: broken(
                p, train=([{"sentence": "a gem "}], "jsonl"), validation=([{"sentence": "dull "}], "jsonl")
            ),
            r"no 'label' column",
        ),
        (lambda p: broken(p, train=(ROWS["train"], "jsonl"), validation=([], "jsonl")), r"validation.*no rows"),
        (lambda p: broken(p, train=([], "csv"), validation=(ROWS["validation"], "csv")), r"train.*no rows"),
        (lambda p: broken(p, train=(ROWS["train"], "parquet"), validation=([], "parquet")), r"validation.*no rows"),
        (
            lambda p: broken(
                p,
                train=([{"sentence": "ok ", "label": 2}, {"sentence": "no ", "label": 0}], "jsonl"),
                validation=(ROWS["validation"], "jsonl"),
            ),
            r"labels \[0, 2\].*0/1",
        ),
        (
            lambda p: broken(
                p, train=(ROWS["train"], "jsonl"), validation=([{"sentence": "x ", "label": -1}], "jsonl")
            ),
            r"'validation' split has labels \[-1\]",
        ),
        (lambda p: broken(p, train=(ROWS["train"], "jsonl"), validation=(ROWS["validation"], "csv")), r"same format"),
        (lambda p: p / "does_not_exist", r"does not exist"),
    ],
)
def test_load_sst2_errors_name_the_problem(tmp_path, make, pattern):
    with pytest.raises(DatasetSchemaError, match=pattern):
        ru.load_sst2(str(make(tmp_path)))


def test_load_sst2_without_labels_for_sft(tmp_path):
    broken(tmp_path, train=([{"sentence": "a gem "}], "jsonl"), validation=([{"sentence": "dull "}], "jsonl"))
    assert ru.load_sst2(str(tmp_path), require_label=False)["train"]["sentence"] == ["a gem "]


def test_check_sst2_names_a_missing_split():
    import datasets

    only_train = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS["train"])})
    with pytest.raises(DatasetSchemaError, match=r"no 'validation' split"):
        validate_sst2(only_train)


def test_tokenize_sentences_appends_eos_and_cuts(tokenizer):
    sentences = ["the film is charming and witty . ", " dull", "a " * 40]
    rows = ru.tokenize_sentences(sentences, tokenizer, max_length=8)
    plain = tokenizer([s.strip() for s in sentences], add_special_tokens=False)["input_ids"]
    for row, ids in zip(rows, plain):
        assert row[-1] == tokenizer.eos_token_id and tokenizer.eos_token_id not in row[:-1]
        assert row[:-1] == ids[:7] and len(row) <= 8
    assert len(rows[2]) == 8  # the long one is cut to max_length, EOS included
    assert ru.tokenize_sentences(sentences, tokenizer, max_length=8, add_eos=False)[1] == plain[1]


def test_pad_batch_both_sides():
    ids, mask = ru.pad_batch([[5, 6, 7], [8]], pad_id=0, side="right")
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = ru.pad_batch([[5, 6, 7], [8]], pad_id=0, side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_lm_labels_keep_eos_although_pad_is_eos(tokenizer):
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # GPT-2's situation
    rows = ru.tokenize_sentences(["a gem", "the film is charming and witty ."], tokenizer, max_length=32)
    ids, mask = ru.pad_batch(rows, tokenizer.pad_token_id, side="right")
    labels = ru.lm_labels(ids, mask)
    eos = tokenizer.eos_token_id
    for i, row in enumerate(rows):
        assert labels[i, : len(row)].tolist() == row  # the EOS is a label
        assert (labels[i, len(row) :] == -100).all()  # the padding is not
    # masking by token id instead would drop every EOS label: the model would never learn to stop
    by_id = ids.masked_fill(ids == tokenizer.pad_token_id, -100)
    assert (labels == eos).sum() == len(rows) and (by_id == eos).sum() == 0


def padding(batches, lengths):
    return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)


@pytest.mark.parametrize("drop_last", [False, True])
def test_length_grouped_batches(tokenizer, smoke_rows, drop_last):
    sentences = [r["sentence"] for r in smoke_rows["train"][:1000]]
    lengths = [len(r) for r in ru.tokenize_sentences(sentences, tokenizer, 32)]
    batch_size = 16
    batches = ru.length_grouped_batches(
        lengths, batch_size, torch.Generator().manual_seed(0), group_factor=10, drop_last=drop_last
    )
    flat = sorted(i for b in batches for i in b)
    if drop_last:
        assert all(len(b) == batch_size for b in batches) and len(flat) == 1000 // batch_size * batch_size
        assert len(set(flat)) == len(flat)
    else:
        assert flat == list(range(len(lengths)))  # every index exactly once
        assert all(1 <= len(b) <= batch_size for b in batches)
    rng = random.Random(0)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    random_batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    assert padding(batches, lengths) < 0.5 * padding(random_batches, lengths)
    # the order is shuffled: not simply shortest first, and another seed gives other batches
    firsts = [max(lengths[i] for i in b) for b in batches]
    assert firsts != sorted(firsts)
    other = ru.length_grouped_batches(lengths, batch_size, torch.Generator().manual_seed(1), group_factor=10)
    assert other != batches


def test_make_prompts_are_whole_words(tokenizer, smoke_rows):
    sentences = [r["sentence"] for r in smoke_rows["train"][:300]] + ["dull", "a gem"]
    prompts = ru.make_prompts(sentences, tokenizer, min_words=2, max_words=6, seed=0)
    long_enough = [s for s in sentences if len(s.split()) >= 3]
    assert len(prompts) == len(long_enough)
    counts = set()
    for prompt, sentence in zip(prompts, long_enough):
        words, text = sentence.split(), tokenizer.decode(prompt)
        k = len(text.split())
        counts.add(k)
        assert 2 <= k <= 6 and k < len(words)
        assert text.split() == words[:k]  # the sentence's first k words, none of them cut
        whole = ru.tokenize_sentences([sentence], tokenizer, max_length=10_000, add_eos=False)[0]
        assert whole[: len(prompt)] == prompt  # the same tokens as in the sentence: nothing re-tokenised differently
    assert counts == {2, 3, 4, 5, 6}  # every length 2..6 occurs
    assert ru.make_prompts(sentences, tokenizer, 2, 6, seed=0) == prompts
    assert ru.make_prompts(sentences, tokenizer, 2, 6, seed=1) != prompts


def test_make_preference_pairs():
    rng = random.Random(3)
    labels = [rng.randrange(2) for _ in range(101)]
    pairs = ru.make_preference_pairs(labels, seed=0)
    assert len(pairs) == min(labels.count(0), labels.count(1))
    assert all(labels[c] == 1 and labels[r] == 0 for c, r in pairs)
    used = [i for pair in pairs for i in pair]
    assert len(used) == len(set(used))
    assert ru.make_preference_pairs(labels, seed=0) == pairs and ru.make_preference_pairs(labels, seed=1) != pairs


def test_make_smoke_sst2():
    data = smoke_data.make_smoke_sst2(n_train=400, n_validation=100, seed=5)
    assert data == smoke_data.make_smoke_sst2(n_train=400, n_validation=100, seed=5)  # deterministic
    assert data != smoke_data.make_smoke_sst2(n_train=400, n_validation=100, seed=6)
    seen = set()
    for split, n in (("train", 400), ("validation", 100)):
        rows = data[split]
        assert len(rows) == n and [r["idx"] for r in rows] == list(range(n))
        assert sum(r["label"] for r in rows) == n // 2  # balanced
        labels = [r["label"] for r in rows]
        assert labels != sorted(labels)  # shuffled
        for r in rows:
            s = r["sentence"]
            assert s == s.lower() and s.endswith(" ") and not s.endswith("  ") and not s.startswith(" ")
            assert "  " not in s and smoke_data.MIN_WORDS <= len(s.split()) <= smoke_data.MAX_WORDS
            assert s not in seen  # no duplicates, so no validation sentence is in train
            seen.add(s)


def test_build_smoke_dataset_writes_a_verified_folder(smoke_dirs, smoke_rows):
    folder = smoke_dirs["data"]
    meta = ru.verify_checkpoint(folder)
    assert meta["kind"] == "smoke_sst2"
    lines = (folder / "train.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == smoke_rows["train"]


# ---------------------------------------------------------------------------
# Data files that do not parse, and data the notebooks cannot use


def test_a_malformed_json_line_names_the_file_and_the_line(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"sentence": "a gem ", "label": 1}\n{"sentence": "dull , "label": 0}\n')
    (tmp_path / "validation.jsonl").write_text('{"sentence": "charming ", "label": 1}\n')
    with pytest.raises(DatasetSchemaError, match=r"train.jsonl, line 2: not valid JSON"):
        ru.load_sst2(str(tmp_path))
    (tmp_path / "train.jsonl").write_text('{"sentence": "a gem ", "label": 1}\n["a list"]\n')
    with pytest.raises(DatasetSchemaError, match=r"line 2: a JSON list"):
        ru.load_sst2(str(tmp_path))


def test_data_the_notebooks_cannot_use_is_refused_with_a_reason(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"sentence": "a gem ", "label": "positive"}\n')
    (tmp_path / "validation.jsonl").write_text('{"sentence": "dull ", "label": "negative"}\n')
    with pytest.raises(DatasetSchemaError, match=r"labels \['positive'\]"):  # notebook 1 does not need labels,
        ru.load_sst2(str(tmp_path), require_label=False)  # but it shows their balance
    (tmp_path / "train.jsonl").write_text('{"sentence": "a gem ", "label": 1}\n')
    (tmp_path / "validation.jsonl").write_text('{"sentence": "  ", "label": 1}\n{"sentence": "", "label": 0}\n')
    with pytest.raises(DatasetSchemaError, match=r"Every sentence of the 'validation' split is empty"):
        ru.load_sst2(str(tmp_path))
