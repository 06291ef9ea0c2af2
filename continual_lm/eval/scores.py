"""Per-task scores: exact-match accuracy and Rouge-L, both on a 0..100 scale.

A prediction is scored against every acceptable reference of its example (``Example.refs()``) and counts with
its best one. See docs/metrics.md.
"""
from __future__ import annotations

import threading
from typing import Sequence

from continual_lm.data.tasks import ACCURACY, ROUGE_L
from continual_lm.errors import unknown_choice

METRICS = (ACCURACY, ROUGE_L)

_scorer = None
_scorer_lock = threading.Lock()


def clean_prediction(text: str) -> str:
    """Generated text -> answer: the first line of the text, stripped.

    Leading whitespace (including newlines) is dropped before cutting, so a generation such as
    ``" positive\\nSentence: ..."`` or ``"\\npositive\\n..."`` gives ``"positive"``.
    """
    return text.lstrip().split("\n", 1)[0].strip()


def normalize_answer(text: str) -> str:
    """Strip, case-fold and collapse internal whitespace: ``"  Not   Entailment "`` -> ``"not entailment"``."""
    return " ".join(str(text).casefold().split())


def _check(predictions: Sequence[str], references: Sequence[Sequence[str] | str]) -> list[tuple[str, ...]]:
    """Validate the inputs and return the references as tuples (a bare string is one reference)."""
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions but {len(references)} reference sets; "
                         "expected one reference set per prediction")
    if len(predictions) == 0:
        raise ValueError("cannot score an empty list of predictions")
    refs = []
    for i, r in enumerate(references):
        r = (r,) if isinstance(r, str) else tuple(r)
        if not r:
            raise ValueError(f"example {i} has no reference; expected at least one")
        refs.append(r)
    return refs


def accuracy(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Percentage (0..100) of predictions equal to any of their references after ``normalize_answer``."""
    refs = _check(predictions, references)
    hits = 0
    for pred, rs in zip(predictions, refs):
        p = normalize_answer(pred)
        hits += any(p == normalize_answer(r) for r in rs)
    return 100.0 * hits / len(refs)


def _rouge_scorer():
    global _scorer
    if _scorer is None:
        with _scorer_lock:
            if _scorer is None:
                from rouge_score import rouge_scorer

                _scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return _scorer


def rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean over examples of the Rouge-L F-measure (with stemming) against the best reference, 0..100."""
    refs = _check(predictions, references)
    scorer = _rouge_scorer()
    total = 0.0
    for pred, rs in zip(predictions, refs):
        total += max(scorer.score(r, pred)["rougeL"].fmeasure for r in rs)
    return 100.0 * total / len(refs)


def score(metric: str, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Score with the named metric (``"accuracy"`` or ``"rougeL"``); an unknown name is a ContinualLMError."""
    if metric == ACCURACY:
        return accuracy(predictions, references)
    if metric == ROUGE_L:
        return rouge_l(predictions, references)
    raise unknown_choice("metric", metric, METRICS)
