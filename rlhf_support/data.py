"""Datasets: loading SST-2 from the hub or a local folder, and checking its schema with messages that say what to fix."""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

from .errors import DatasetSchemaError
from .hub import _hub_error, hub_online, looks_like_local_path
from .reporting import library_bars_off

if typing.TYPE_CHECKING:  # for annotations only: these load when first used
    import datasets


DATA_EXTENSIONS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def _data_file_is_empty(path: Path) -> bool:
    """True when a data file holds no rows (a CSV with only its header line counts as empty)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows == 0
    with open(path, encoding="utf-8") as f:
        non_blank_lines = sum(1 for line in f if line.strip())
    return non_blank_lines <= (1 if path.suffix == ".csv" else 0)


def _check_json_lines(path: Path) -> None:
    """Raise a DatasetSchemaError naming the file and line of the first line that is not a JSON object."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DatasetSchemaError(
                    f"{path}, line {number}: not valid JSON ({error.msg}, column {error.colno}). "
                    'Each line must be one object such as {"sentence": "...", "label": 1}; '
                    "fix or delete that line."
                ) from None
            if not isinstance(row, dict):
                raise DatasetSchemaError(
                    f"{path}, line {number}: a JSON {type(row).__name__}, not an object such as "
                    '{"sentence": "...", "label": 1}; fix or delete that line.'
                )


def load_sst2(name_or_path: str, require_label: bool = True) -> datasets.DatasetDict:
    """SST-2 from the hub (`stanfordnlp/sst2`) or a local folder with train/validation files, checked."""
    import datasets

    hub_online()  # after the import: an unreachable hub switches datasets to offline mode
    path = Path(name_or_path)
    if path.is_dir():
        data_files, kinds = {}, set()
        for split in ("train", "validation"):
            found = sorted(p for p in path.iterdir() if p.stem == split and p.suffix in DATA_EXTENSIONS)
            if not found:
                raise DatasetSchemaError(
                    f"{path} has no '{split}' file: expected {split}.jsonl, "
                    f"{split}.csv or {split}.parquet beside the other split."
                )
            if _data_file_is_empty(found[0]):  # the datasets library fails on these with an obscure error
                raise DatasetSchemaError(f"{found[0]} holds no rows: the '{split}' split needs at least one sentence.")
            if DATA_EXTENSIONS[found[0].suffix] == "json":
                _check_json_lines(found[0])  # the datasets library would not say which line is broken
            data_files[split] = str(found[0])
            kinds.add(DATA_EXTENSIONS[found[0].suffix])
        if len(kinds) > 1:
            raise DatasetSchemaError(f"{path}: train and validation must have the same format, found {sorted(kinds)}.")
        try:
            with library_bars_off():  # a local file reads in a second: no bar to leave behind
                dataset = datasets.load_dataset(kinds.pop(), data_files=data_files)
        except Exception as error:  # DatasetGenerationError and friends: name the files and the cause
            if not type(error).__name__.endswith("GenerationError"):
                raise
            cause = error.__cause__ or error.__context__ or error
            raise DatasetSchemaError(
                f"{path}: the data files could not be read ({type(cause).__name__}: "
                f"{str(cause)[:300]}). Check {', '.join(data_files.values())}."
            ) from error
    elif looks_like_local_path(name_or_path):
        raise DatasetSchemaError(
            f"Dataset folder {name_or_path!r} does not exist. Check RLHF_DATASET, "
            "or run the notebook that builds it first."
        )
    else:
        try:
            dataset = datasets.load_dataset(name_or_path)
        except (ConnectionError, OSError, ValueError) as error:
            if "offline" in str(error).lower() or "couldn't reach" in str(error).lower() or not hub_online():
                raise _hub_error("the dataset", name_or_path, error) from error
            raise
    return validate_sst2(dataset, require_label=require_label)


def validate_sst2(dataset: Any, require_label: bool = True) -> Any:
    """Raise a DatasetSchemaError naming the missing split, missing column or bad label, else return it.

    A `label` column is checked whenever it is there, even where the notebook does not need it.
    """
    for split in ("train", "validation"):
        if split not in dataset:
            raise DatasetSchemaError(
                f"The dataset has no '{split}' split (it has {list(dataset)}); SST-2 needs 'train' and 'validation'."
            )
        columns = dataset[split].column_names
        needed = ["sentence"] + (["label"] if require_label else [])
        for column in needed:
            if column not in columns:
                raise DatasetSchemaError(
                    f"The '{split}' split has no '{column}' column (columns: {columns}). "
                    "Rename the text column to 'sentence' and the 0/1 column to 'label'."
                )
        if len(dataset[split]) == 0:
            raise DatasetSchemaError(f"The '{split}' split is empty: it needs at least one sentence.")
        sentences = dataset[split]["sentence"]
        not_text = next((i for i, s in enumerate(sentences) if not isinstance(s, str)), None)
        if not_text is not None:
            raise DatasetSchemaError(
                f"The '{split}' split's sentence {not_text} is {sentences[not_text]!r}, not text. "
                "Every 'sentence' must be a string."
            )
        if not any(s.strip() for s in sentences):
            raise DatasetSchemaError(
                f"Every sentence of the '{split}' split is empty: it needs at least one sentence with text."
            )
        if "label" in columns:
            labels = set(dataset[split].unique("label"))
            if not labels <= {0, 1}:
                shown = sorted(labels, key=repr)[:10]
                raise DatasetSchemaError(
                    f"The '{split}' split has labels {shown}; expected 0 "
                    "(negative) and 1 (positive). Map the labels to 0/1 first."
                )
    return dataset
