import pytest

from continual_lm.data.tasks import ACCURACY, ROUGE_L, Example
from continual_lm.errors import ContinualLMError
from continual_lm.eval.scores import accuracy, clean_prediction, normalize_answer, rouge_l, score


def test_clean_prediction_cuts_at_first_newline_and_strips():
    assert clean_prediction(" positive\nSentence: more text") == "positive"
    assert clean_prediction("  not entailment  ") == "not entailment"
    assert clean_prediction("answer\r\nnext") == "answer"
    assert clean_prediction("\n positive\nmore") == "positive"  # leading blank lines are not the answer
    assert clean_prediction("") == ""
    assert clean_prediction("\n\n") == ""


def test_normalize_answer():
    assert normalize_answer("  Not \t  ENTAILMENT \n") == "not entailment"
    assert normalize_answer("Straße") == "strasse"  # case-folding, not just lower()
    assert normalize_answer("") == ""


def test_accuracy_normalises_case_and_whitespace():
    preds = ["Positive", "  negative ", "NOT   entailment", "neutral"]
    refs = [("positive",), ("negative",), ("not entailment",), ("positive",)]
    assert accuracy(preds, refs) == pytest.approx(75.0)


def test_accuracy_is_exact_match_not_substring():
    assert accuracy(["positive review"], [("positive",)]) == 0.0
    assert accuracy(["pos"], [("positive",)]) == 0.0


def test_accuracy_any_reference_counts():
    preds = ["yes", "no", "maybe"]
    refs = [("no", "Yes"), ("yes",), ("perhaps", "maybe")]
    assert accuracy(preds, refs) == pytest.approx(200 / 3)


def test_accuracy_with_example_refs():
    exs = [Example("x", "a"), Example("y", "b", references=("b", "c"))]
    assert accuracy(["A", "c"], [e.refs() for e in exs]) == 100.0


def test_bare_string_reference_is_one_reference():
    # a str must not be iterated as characters: "p" is not a reference of "positive"
    assert accuracy(["p"], ["positive"]) == 0.0
    assert accuracy(["positive"], ["positive"]) == 100.0


def test_rouge_l_identical_and_disjoint():
    assert rouge_l(["the cat sat on the mat"], [("the cat sat on the mat",)]) == pytest.approx(100.0)
    assert rouge_l(["dogs bark loudly"], [("the cat sat",)]) == pytest.approx(0.0)
    assert rouge_l([""], [("the cat sat",)]) == pytest.approx(0.0)


def test_rouge_l_partial_hand_computed():
    # prediction 3 tokens, reference 6 tokens, LCS = 3: P = 1, R = 1/2, F = 2PR/(P+R) = 2/3
    assert rouge_l(["the cat sat"], [("the cat sat on the mat",)]) == pytest.approx(200 / 3)
    # prediction "a b c d", reference "a x c y": LCS = 2 ("a c"), P = R = 1/2, F = 1/2
    assert rouge_l(["a b c d"], [("a x c y",)]) == pytest.approx(50.0)


def test_rouge_l_uses_stemming_and_case():
    assert rouge_l(["The cats RUNNING"], [("the cat running",)]) == pytest.approx(100.0)


def test_rouge_l_best_reference_and_mean_over_examples():
    preds = ["the cat sat", "hello world"]
    refs = [("dogs bark", "the cat sat on the mat", "the cat sat"), ("goodbye moon",)]
    # example 1: best reference is the identical one (100); example 2: 0 -> mean 50
    assert rouge_l(preds, refs) == pytest.approx(50.0)
    preds = ["the cat sat"]
    refs = [("dogs bark", "the cat sat on the mat")]
    assert rouge_l(preds, refs) == pytest.approx(200 / 3)


def test_score_dispatch():
    assert score(ACCURACY, ["a"], [("A",)]) == 100.0
    assert score(ROUGE_L, ["the cat sat"], [("the cat sat on the mat",)]) == pytest.approx(200 / 3)
    with pytest.raises(ContinualLMError, match="unknown metric 'rougel'.*rougeL"):
        score("rougel", ["a"], [("a",)])


@pytest.mark.parametrize("fn", [accuracy, rouge_l])
def test_length_mismatch_and_empty_are_value_errors(fn):
    with pytest.raises(ValueError, match="2 predictions but 1 reference"):
        fn(["a", "b"], [("a",)])
    with pytest.raises(ValueError, match="empty"):
        fn([], [])
    with pytest.raises(ValueError, match="no reference"):
        fn(["a"], [()])
