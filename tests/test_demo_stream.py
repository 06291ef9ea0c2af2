import re

import pytest

from continual_lm.data.demo import DEMO_TASK_NAMES, demo_task, demo_tasks
from continual_lm.data.tasks import ACCURACY, CLASSIFICATION, GENERATION, ROUGE_L
from continual_lm.errors import ContinualLMError


@pytest.fixture(scope="module")
def tasks():
    return demo_tasks()


def _approx_tokens(text: str) -> int:
    # words and punctuation marks: a lower bound close to a BPE count for these plain-English prompts
    return len(re.findall(r"\w+|[^\w\s]", text))


def test_at_least_four_tasks_with_both_metrics(tasks):
    assert len(tasks) >= 4
    assert [t.name for t in tasks] == list(DEMO_TASK_NAMES)
    assert len(set(DEMO_TASK_NAMES)) == len(DEMO_TASK_NAMES)
    assert {t.metric for t in tasks} == {ACCURACY, ROUGE_L}
    for t in tasks:
        assert (t.kind, t.metric) in {(CLASSIFICATION, ACCURACY), (GENERATION, ROUGE_L)}
        assert t.source == "demo"
        assert (len(t.train), len(t.test)) == (64, 32)


def test_deterministic_by_seed(tasks):
    again = demo_tasks(seed=0)
    assert [(t.train, t.test) for t in again] == [(t.train, t.test) for t in tasks]


def test_different_seeds_differ(tasks):
    other = demo_tasks(seed=1)
    for a, b in zip(tasks, other):
        assert a.train != b.train and a.test != b.test


def test_train_and_test_disjoint_and_unique():
    for seed in (0, 1, 2):
        for t in demo_tasks(seed=seed):
            train_inputs = [ex.input for ex in t.train]
            test_inputs = [ex.input for ex in t.test]
            assert len(set(train_inputs)) == len(train_inputs) and len(set(test_inputs)) == len(test_inputs)
            assert set(train_inputs).isdisjoint(test_inputs), t.name


def test_inputs_tell_tasks_apart(tasks):
    seen = {}
    for t in tasks:
        for ex in t.train + t.test:
            assert seen.setdefault(ex.input, t.name) == t.name, f"{ex.input!r} is in {seen[ex.input]} and {t.name}"


def test_answer_vocabularies_collide(tasks):
    answers = {t.name: {w for ex in t.train + t.test for w in ex.target.split()} for t in tasks}
    classification = [t for t in tasks if t.kind == CLASSIFICATION]
    # at least two classification tasks share their label set under different rules
    assert any(a.labels == b.labels for i, a in enumerate(classification) for b in classification[i + 1:])
    # the generation tasks' answers contain other tasks' answer words
    gen_words = set().union(*(answers[t.name] for t in tasks if t.kind == GENERATION))
    assert gen_words & set().union(*(set(t.labels) for t in classification))


def test_prompts_short_answers_short_no_task_name(tasks):
    for t in tasks:
        assert t.instruction and len(t.instruction) < 60
        for ex in t.train + t.test:
            prompt = t.prompt(ex.input)
            assert _approx_tokens(prompt) <= 22, prompt
            assert t.name not in prompt and t.name.replace("_", " ") not in prompt
            assert 1 <= len(ex.target.split()) <= 3
            if t.labels:
                assert ex.target in t.labels
        assert t.prompt("x", task_name_in_prompt=True).startswith(f"Task: {t.name}\n")


def test_classification_splits_are_class_balanced(tasks):
    for t in tasks:
        if t.kind == CLASSIFICATION:
            for split in (t.train, t.test):
                counts = [sum(ex.target == lab for ex in split) for lab in t.labels]
                assert max(counts) - min(counts) <= 1, (t.name, counts)


def test_task_rules():
    rev = demo_task("reverse", seed=4)
    assert all(ex.target.split() == ex.input.split()[::-1] for ex in rev.train + rev.test)
    add = demo_task("arithmetic", seed=4)
    for ex in add.train + add.test:
        a, op, b = ex.input.split()
        assert op == "+" and int(ex.target) == int(a) + int(b)
    sign = demo_task("number_sign", seed=4)
    for ex in sign.train + sign.test:
        a, op, b = ex.input.split()
        assert op == "-" and ex.target == ("positive" if int(a) > int(b) else "negative")


def test_sizes_and_errors():
    t = demo_task("sentiment", seed=0, n_train=10, n_test=5)
    assert (len(t.train), len(t.test)) == (10, 5)
    with pytest.raises(ContinualLMError, match="too many"):
        demo_task("arithmetic", n_train=400, n_test=100)
    with pytest.raises(ContinualLMError, match="n_train must be a positive integer"):
        demo_task("reverse", n_train=0)
    with pytest.raises(ContinualLMError, match="unknown demo task 'revers'.*Did you mean 'reverse'"):
        demo_task("revers")
