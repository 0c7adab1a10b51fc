"""The deprecation guard of conftest.py: it must catch a deprecated call the project makes, and only that."""

import threading
import warnings

import pytest
import torch
from conftest import DeprecationGuard


def test_the_guard_catches_a_deprecated_call_into_transformers(tiny_lm):
    ids = torch.tensor([[1, 2, 3]])
    with DeprecationGuard() as guard:
        tiny_lm(input_ids=ids, past_key_values=None)  # the old name of `cache=` (deprecated in transformers 5.24)
    assert guard.found and "past_key_values" in guard.found[0] and "test_deprecations.py" in guard.found[0]


def test_the_guard_ignores_warnings_that_are_not_from_the_libraries_or_not_from_our_calls(tiny_lm):
    with pytest.warns((DeprecationWarning, FutureWarning)) as passed_on, DeprecationGuard() as guard:
        warnings.warn(
            "this helper is deprecated", DeprecationWarning, stacklevel=1
        )  # raised by the test itself, not a library
        thread = threading.Thread(target=warnings.warn, args=("x is deprecated", FutureWarning))
        thread.start()
        thread.join()  # raised outside any project frame
        tiny_lm(input_ids=torch.tensor([[1, 2, 3]]))  # the current API: no warning
    assert guard.found == []
    assert {str(w.message) for w in passed_on} == {"this helper is deprecated", "x is deprecated"}  # still reported


def test_generation_uses_the_current_cache_api(tiny_lm, tokenizer):
    import rlhf_utils as ru

    ids, mask = ru.pad_batch([[5, 6, 7], [8, 9]], tokenizer.pad_token_id, side="left")
    with DeprecationGuard() as guard:
        ru.generate(
            tiny_lm,
            ids,
            mask,
            6,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
            generator=torch.Generator().manual_seed(0),
        )
    assert guard.found == []
