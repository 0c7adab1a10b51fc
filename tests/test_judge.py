"""The independent judge (VADER) and the over-optimisation curve of notebook 3."""

import socket

import pytest

import rlhf_utils as ru


def test_the_judge_works_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("no network in this test")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    judge = ru.SentimentJudge()  # the lexicon ships inside the package
    texts = ["a charming , moving and wonderful film", "a dull , lifeless mess", "the film", "not good at all"]
    assert judge.positive(texts) == [True, False, False, False]
    scores = judge.scores(texts)
    assert scores[0] > 0.5 and scores[1] < -0.5 and scores[2] == 0.0 and all(-1 <= s <= 1 for s in scores)


def test_the_judge_likes_strings_of_positive_words_a_blind_spot_notebook_3_names():
    judge = ru.SentimentJudge()
    assert judge.positive(["good good good wonderful wonderful"]) == [True]


def test_a_missing_judge_package_says_how_to_install_it(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_vader(name, *args, **kwargs):
        if name.startswith("vaderSentiment"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_vader)
    with pytest.raises(ru.RLHFError, match="pip install vaderSentiment"):
        ru.SentimentJudge()
