"""Per-task scores on a 0..100 scale: exact-match accuracy, Rouge-L, edit similarity and SARI.

A prediction is scored against every acceptable reference of its example (``Example.refs()``) and counts with
its best one. What of an answer is compared is the task's ``AnswerRule.extract`` (the whole answer, its letter,
its number, Py150 code with its literals restored), applied to the prediction and the references alike by
:func:`score_task`. See docs/metrics.md.
"""
from __future__ import annotations

import re
import threading
from decimal import Decimal, InvalidOperation
from typing import Sequence

from continual_lm.data.tasks import (
    ACCURACY,
    CODE_LITERALS,
    EDIT_SIM,
    LETTER,
    NUMBER,
    ROUGE_L,
    SARI,
    WHOLE,
    Task,
)
from continual_lm.errors import unknown_choice

METRICS = (ACCURACY, ROUGE_L, EDIT_SIM, SARI)

_scorers: dict[str, object] = {}
_scorer_lock = threading.Lock()


def clean_prediction(text: str, stop: Sequence[str] = ("\n",)) -> str:
    """Generated text -> answer: leading whitespace dropped, cut at the first of the ``stop`` strings, stripped.

    With the default (the first line), ``" positive\\nSentence: ..."`` or ``"\\npositive\\n..."`` gives
    ``"positive"``; with ``stop=()`` a multi-line answer (a letter and its reasoning, a summary) is kept whole.
    """
    text = text.lstrip()
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:cut].strip()


def normalize_answer(text: str) -> str:
    """Strip, case-fold and collapse internal whitespace: ``"  Not   Entailment "`` -> ``"not entailment"``."""
    return " ".join(str(text).casefold().split())


# ---- what is compared ------------------------------------------------------------------------------------------
_NUMBER_RE = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")
# Py150 (TRACE's evaluations/eval_Py150.py): bare placeholders become "0" / "", valued ones their value.
_BARE_LITERALS = (("<NUM_LIT>", "0"), ("<STR_LIT>", ""), ("<CHAR_LIT>", ""))
_VALUED_LITERAL_RE = re.compile(r"<(?:STR|NUM|CHAR)_LIT:(.*?)>", re.S)


def _first_number(text: str) -> str:
    match = _NUMBER_RE.search(text)
    if match is None:
        return text.strip()
    try:  # one spelling per value: "1,200.50" -> "1200.5", "3.0" -> "3"
        return format(Decimal(match.group().replace(",", "")).normalize(), "f")
    except InvalidOperation:  # pragma: no cover - the pattern only matches numbers
        return match.group()


def restore_code_literals(code: str) -> str:
    """TRACE's Py150 normalisation: ``<NUM_LIT>`` -> ``0``, ``<STR_LIT>``/``<CHAR_LIT>`` -> nothing,
    ``<STR_LIT:x>``/``<NUM_LIT:x>``/``<CHAR_LIT:x>`` -> ``x``."""
    for placeholder, value in _BARE_LITERALS:
        code = code.replace(placeholder, value)
    return _VALUED_LITERAL_RE.sub(lambda m: m.group(1), code)


def extract_answer(text: str, extract: str = WHOLE) -> str:
    """The part of an answer that is compared (``AnswerRule.extract``)."""
    if extract == WHOLE:
        return text
    if extract == LETTER:  # TRACE's ScienceQA: the first character is the answer ("B\nA clause is ...")
        return text.strip()[:1]
    if extract == NUMBER:
        return _first_number(text)
    if extract == CODE_LITERALS:
        return restore_code_literals(text)
    raise unknown_choice("answer extraction", extract, (WHOLE, LETTER, NUMBER, CODE_LITERALS))


# ---- metrics ---------------------------------------------------------------------------------------------------
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


def _accuracy_terms(predictions: Sequence[str], refs: list[tuple[str, ...]]) -> list[bool]:
    return [any(normalize_answer(pred) == normalize_answer(r) for r in rs) for pred, rs in zip(predictions, refs)]


def accuracy(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Percentage (0..100) of predictions equal to any of their references after ``normalize_answer``."""
    refs = _check(predictions, references)
    return 100.0 * sum(_accuracy_terms(predictions, refs)) / len(refs)


# Scripts written without spaces between words: each character is a token (Han, Hiragana, Katakana, CJK
# compatibility ideographs and the supplementary Han planes).
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003ffff"
_MULTILINGUAL_TOKEN_RE = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")


def _rouge(multilingual: bool):
    """rouge-score's Rouge-L scorer with stemming; ``multilingual``: with :class:`MultilingualTokenizer`."""
    key = "multilingual" if multilingual else "default"
    if key not in _scorers:
        with _scorer_lock:
            if key not in _scorers:
                from rouge_score import rouge_scorer

                tokenizer = MultilingualTokenizer() if multilingual else None
                _scorers[key] = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True, tokenizer=tokenizer)
    return _scorers[key]


class MultilingualTokenizer:
    """A rouge-score tokenizer for any script. rouge-score's default keeps ``[a-z0-9]`` only, so Chinese text has
    no tokens (Rouge-L 0 whatever the prediction) and ``"Führerausweis"`` becomes ``"f"``, ``"hrerausweis"``. This
    one lower-cases as the default does, makes each CJK character a token and every other run of letters and
    digits a word; ASCII words are stemmed as by the default (its Porter stemmer, words of more than 3
    characters), other words are kept as they are. On text whose letters and digits are all ASCII it gives the
    default's tokens."""

    def __init__(self):
        from nltk.stem import porter  # the stemmer of rouge-score's DefaultTokenizer (nltk comes with rouge-score)

        self._stemmer = porter.PorterStemmer()

    def tokenize(self, text: str) -> list[str]:
        tokens = _MULTILINGUAL_TOKEN_RE.findall(text.lower())
        return [self._stemmer.stem(t) if len(t) > 3 and t.isascii() else t for t in tokens]


def _rouge_terms(predictions: Sequence[str], refs: list[tuple[str, ...]]) -> list[float]:
    return [max(_rouge(not r.isascii()).score(r, pred)["rougeL"].fmeasure for r in rs)
            for pred, rs in zip(predictions, refs)]


def rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean over examples of the Rouge-L F-measure (with stemming) against the best reference, 0..100.

    A reference that is plain ASCII is scored with rouge-score's default tokenizer (the scores of every English
    benchmark are unchanged); any other with :class:`MultilingualTokenizer` (Chinese by character, German with its
    umlauts)."""
    refs = _check(predictions, references)
    return 100.0 * sum(_rouge_terms(predictions, refs)) / len(refs)


def _edit_terms(predictions: Sequence[str], refs: list[tuple[str, ...]]) -> list[float]:
    from rapidfuzz import fuzz

    return [max(fuzz.ratio(pred, r) if pred and r else 0.0 for r in rs) for pred, rs in zip(predictions, refs)]


def edit_similarity(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean over examples of the best reference's edit similarity, 0..100: ``rapidfuzz.fuzz.ratio``, i.e.
    100 * (1 - indel distance / (len(prediction) + len(reference))) on characters (the ``fuzz.ratio`` that
    TRACE's and CodeXGLUE's code-completion evaluation call). An empty prediction or reference scores 0, as
    TRACE's ``caculate_fuzz`` counts it."""
    refs = _check(predictions, references)
    return sum(_edit_terms(predictions, refs)) / len(refs)


def _sari_terms(predictions: Sequence[str], refs: list[tuple[str, ...]], sources: Sequence[str]) -> list[float]:
    from .sari import sari_sentence

    if len(sources) != len(refs):
        raise ValueError(f"got {len(predictions)} predictions but {len(sources)} sources; SARI needs one source "
                         "per prediction")
    return [sari_sentence(s, p, r) for s, p, r in zip(sources, predictions, refs)]


def sari(predictions: Sequence[str], references: Sequence[Sequence[str]], sources: Sequence[str]) -> float:
    """Mean sentence SARI (Xu et al. 2016) of the predictions against their references and sources, 0..100
    (eval/sari.py)."""
    refs = _check(predictions, references)
    return 100.0 * sum(_sari_terms(predictions, refs, sources)) / len(refs)


def score(metric: str, predictions: Sequence[str], references: Sequence[Sequence[str]],
          sources: Sequence[str] | None = None) -> float:
    """Score with the named metric (``"accuracy"``, ``"rougeL"``, ``"edit_sim"`` or ``"sari"``, which needs
    ``sources``); an unknown name is a ContinualLMError."""
    if metric == ACCURACY:
        return accuracy(predictions, references)
    if metric == ROUGE_L:
        return rouge_l(predictions, references)
    if metric == EDIT_SIM:
        return edit_similarity(predictions, references)
    if metric == SARI:
        if sources is None:
            raise ValueError("SARI needs the source of every prediction (sources=...)")
        return sari(predictions, references, sources)
    raise unknown_choice("metric", metric, METRICS)


def example_scores(metric: str, predictions: Sequence[str], references: Sequence[Sequence[str]],
                   sources: Sequence[str] | None = None) -> list[float]:
    """Each example's own score, 0..100 (``score`` is their mean): 0 or 100 for accuracy, the best reference's
    Rouge-L F-measure, edit similarity or sentence SARI."""
    refs = _check(predictions, references)
    if metric == ACCURACY:
        return [100.0 * hit for hit in _accuracy_terms(predictions, refs)]
    if metric == ROUGE_L:
        return [100.0 * value for value in _rouge_terms(predictions, refs)]
    if metric == EDIT_SIM:
        return _edit_terms(predictions, refs)
    if metric == SARI:
        if sources is None:
            raise ValueError("SARI needs the source of every prediction (sources=...)")
        return [100.0 * value for value in _sari_terms(predictions, refs, sources)]
    raise unknown_choice("metric", metric, METRICS)


def _task_inputs(task: Task, predictions: Sequence[str]):
    extract = task.answer.extract
    refs = [tuple(extract_answer(r, extract) for r in e.refs()) for e in task.test]
    preds = [extract_answer(p, extract) for p in predictions]
    sources = [task.prompt(e.input) for e in task.test] if task.metric == SARI else None
    return preds, refs, sources


def score_task(task: Task, predictions: Sequence[str]) -> float:
    """A task's score for its test predictions (answers as ``clean_prediction`` cut them, in test order): its
    answer rule's extraction on predictions and references, then its metric. SARI's sources are the prompts
    (instruction, input and answer cue), as TRACE's evaluation passes them."""
    return score(task.metric, *_task_inputs(task, predictions))


def task_example_scores(task: Task, predictions: Sequence[str]) -> list[float]:
    """Each test example's score under the task's answer rule and metric (``score_task`` is their mean)."""
    return example_scores(task.metric, *_task_inputs(task, predictions))
