"""SARI (Xu et al. 2016, "Optimizing Statistical Machine Translation for Text Simplification"), sentence level.

Written here because no maintained package computes it offline: Hugging Face ``evaluate``/``datasets`` fetch their
``sari`` script from the Hub at load time (TRACE's evaluation calls ``datasets.load_metric("sari")``), EASSE is
not on PyPI, torchmetrics has no SARI. This follows that Hub implementation (itself tensor2tensor's
``sari_hook.py``), so the numbers are TRACE's:

* texts are lower-cased and tokenized with sacrebleu's ``13a`` tokenizer, then split on single spaces;
* for n = 1..4, with S, C the n-gram counts of source and candidate, each multiplied by the number of references
  R, and Ref the n-gram counts summed over the references:
  keep = S & C (minimum), good keep = keep & Ref, all keep = S & Ref;
  P_keep = mean over the distinct kept n-grams of good/keep, R_keep = sum(good keep) / sum(all keep),
  F_keep their harmonic mean; delete = S - C, good delete = delete - Ref, P_del = mean over the distinct deleted
  n-grams of good/delete; added = set(C) - set(S), P_add = |added ∩ Ref| / |added|,
  R_add = |added ∩ Ref| / |set(Ref) - set(S)|, F_add their harmonic mean;
* an empty set gives a precision or recall of 1 (0/0 = 1, so an exact copy of the reference scores 1), and an F of
  two zeros is 0;
* SARI = (mean_n F_keep + mean_n P_del + mean_n F_add) / 3, in 0..1.

``tests/test_scores.py`` checks it against the value the reference implementation prints for its documented
example and against hand-computed n-gram counts.
"""
from __future__ import annotations

from collections import Counter
from functools import lru_cache
from typing import Sequence


@lru_cache(maxsize=1)
def _tokenizer():
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()


def normalize(text: str) -> str:
    """Lower-cased, 13a-tokenized text (tokens separated by single spaces)."""
    return _tokenizer()(text.lower())


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision > 0 or recall > 0 else 0.0


def _ngram_scores(source: list, candidate: list, references: list[list]) -> tuple[float, float, float]:
    """(F_keep, P_del, F_add) of one n-gram order."""
    count = len(references)
    ref = Counter(g for r in references for g in r)
    src = Counter({g: c * count for g, c in Counter(source).items()})
    cand = Counter({g: c * count for g, c in Counter(candidate).items()})

    keep, keep_all = src & cand, src & ref
    keep_good = keep & ref
    keep_p = sum(keep_good[g] / keep[g] for g in keep_good) / len(keep) if keep else 1.0
    keep_r = sum(keep_good.values()) / sum(keep_all.values()) if keep_all else 1.0

    delete = src - cand
    delete_good = delete - ref
    del_p = sum(delete_good[g] / delete[g] for g in delete_good) / len(delete) if delete else 1.0

    added, ref_new = set(cand) - set(src), set(ref) - set(src)
    added_good = added & set(ref)
    add_p = len(added_good) / len(added) if added else 1.0
    add_r = len(added_good) / len(ref_new) if ref_new else 1.0
    return _f1(keep_p, keep_r), del_p, _f1(add_p, add_r)


def sari_sentence(source: str, prediction: str, references: Sequence[str]) -> float:
    """SARI of one prediction, 0..1."""
    src, cand = normalize(source).split(" "), normalize(prediction).split(" ")
    refs = [normalize(r).split(" ") for r in references]
    per_n = [_ngram_scores(_ngrams(src, n), _ngrams(cand, n), [_ngrams(r, n) for r in refs]) for n in range(1, 5)]
    keep, delete, add = (sum(scores) / 4 for scores in zip(*per_n))
    return (keep + delete + add) / 3
