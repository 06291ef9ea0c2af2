import json
from collections import Counter

import pytest

from continual_lm.data import benchmarks
from continual_lm.data.benchmarks import (
    BENCHMARKS,
    list_benchmarks,
    load_stream,
    read_task,
    resolve_data_dir,
    resolve_order,
    subsample,
)
from continual_lm.data.demo import demo_tasks
from continual_lm.data.tasks import ACCURACY, CLASSIFICATION, GENERATION, ROUGE_L, Example, Task
from continual_lm.errors import ContinualLMError


@pytest.fixture(scope="module")
def orders_file(shared_data):
    return json.loads((shared_data / "task_orders.json").read_text())


def _sapt_name(name: str) -> str:
    return {"sst2": "sst-2", "boolq": "boolqa"}.get(name, name)


# ---------------------------------------------------------------------------------------------------------------
# orders


def test_orders_equal_task_orders_json(orders_file):
    for i in ("1", "2", "3"):
        assert resolve_order("standard", i) == orders_file["standard_cl"][f"order{i}"]
    for i in ("4", "5", "6"):
        assert resolve_order("long", i) == orders_file["long_sequence_migu_numbering"][f"order{i}"]
    for i in ("1", "2"):
        assert resolve_order("superni", i) == orders_file["superni"][f"order{i}"]


def test_sapt_aliases_equal_sapt_numbering(orders_file):
    sapt = orders_file["long_sequence_sapt_numbering"]
    assert resolve_order("long", "sapt4") == [_sapt_name(t) for t in sapt["order4"]]
    assert resolve_order("long", "sapt5") == [_sapt_name(t) for t in sapt["order5"]]
    assert resolve_order("long", "sapt4") == resolve_order("long", 6)
    assert resolve_order("long", "sapt5") == resolve_order("long", 4)


def test_order_spellings_and_default():
    expected = resolve_order("standard", "2")
    for spelling in (2, "2", "order2", "Order 2", "ORDER_2"):
        assert resolve_order("standard", spelling) == expected
    assert resolve_order("long", "SAPT_order4") == resolve_order("long", "6")
    assert resolve_order("standard") == resolve_order("standard", 1)
    assert resolve_order("demo", 1) == [t.name for t in demo_tasks()]


def test_resolve_order_returns_a_copy():
    order = resolve_order("standard", 1)
    order.append("x")
    assert resolve_order("standard", 1)[-1] == "agnews"


def test_unknown_benchmark_and_order_suggest():
    with pytest.raises(ContinualLMError, match=r"unknown benchmark 'standart'.*Did you mean 'standard'"):
        resolve_order("standart", 1)
    with pytest.raises(ContinualLMError, match=r"unknown standard order '4'; expected one of: 1, 2, 3"):
        resolve_order("standard", 4)
    with pytest.raises(ContinualLMError, match=r"sapt4"):
        resolve_order("long", "sapt6")
    with pytest.raises(ContinualLMError, match="no predefined orders"):
        resolve_order("custom", 1)


def test_list_benchmarks():
    listed = list_benchmarks()
    assert listed == {
        "standard": ["1", "2", "3"],
        "long": ["4", "5", "6", "sapt4", "sapt5"],
        "superni": ["1", "2"],
        "trace": ["1"],
        "demo": ["1"],
        "custom": [],
    }
    assert set(listed) == set(BENCHMARKS)


def test_every_order_task_reads_from_real_data(shared_data):
    for name in ("standard", "long", "superni", "trace"):
        bench = BENCHMARKS[name]
        for task_name in bench.task_names():
            task = read_task(name, shared_data, task_name)
            assert task.name == task_name
            assert task.train and task.test
            if name in ("standard", "long"):
                assert (task.kind, task.metric) == (CLASSIFICATION, ACCURACY)
    assert len(BENCHMARKS["long"].task_names()) == 15 and len(BENCHMARKS["superni"].task_names()) == 15


# ---------------------------------------------------------------------------------------------------------------
# data dir


def test_resolve_data_dir(shared_data, tmp_path, monkeypatch):
    monkeypatch.delenv(benchmarks.DATA_ENV, raising=False)
    assert resolve_data_dir(shared_data) == shared_data
    with pytest.raises(ContinualLMError, match=r"--data-dir.*CONTINUAL_LM_DATA"):
        resolve_data_dir(None)
    monkeypatch.setenv(benchmarks.DATA_ENV, str(shared_data))
    assert resolve_data_dir(None) == shared_data
    assert resolve_data_dir(tmp_path) == tmp_path  # the option wins over the env
    missing = tmp_path / "nowhere"
    with pytest.raises(ContinualLMError, match="does not exist") as e:
        resolve_data_dir(missing)
    assert str(missing) in str(e.value) and "--data-dir" in str(e.value)
    monkeypatch.setenv(benchmarks.DATA_ENV, str(missing))
    with pytest.raises(ContinualLMError) as e:
        resolve_data_dir(None)
    assert str(missing) in str(e.value) and "CONTINUAL_LM_DATA" in str(e.value)


def test_load_stream_uses_env_data_dir(shared_data, monkeypatch):
    monkeypatch.setenv(benchmarks.DATA_ENV, str(shared_data))
    stream = load_stream("standard", 3, max_train=5, max_test=3)
    assert [t.name for t in stream] == ["yahoo", "amazon", "agnews", "dbpedia"]
    assert all(len(t.train) == 5 and len(t.test) == 3 for t in stream)


def test_load_stream_needs_data_dir(monkeypatch):
    monkeypatch.delenv(benchmarks.DATA_ENV, raising=False)
    with pytest.raises(ContinualLMError, match="CONTINUAL_LM_DATA"):
        load_stream("superni", 1)


# ---------------------------------------------------------------------------------------------------------------
# subsampling


def _toy(name="toy", kind=CLASSIFICATION, n=60):
    labels = ["a", "b", "c"]
    examples = [Example(input=f"{name} {i}", target=labels[i % 3] if i < 45 else "a") for i in range(n)]
    return Task(name=name, kind=kind, metric=ACCURACY if kind == CLASSIFICATION else ROUGE_L, instruction="",
                train=examples, test=list(examples[:30]), labels=labels if kind == CLASSIFICATION else None)


def test_subsample_deterministic_and_capped():
    task = _toy()
    a = subsample(task, max_train=10, max_test=7, seed=3)
    b = subsample(task, max_train=10, max_test=7, seed=3)
    assert a.train == b.train and a.test == b.test
    assert (len(a.train), len(a.test)) == (10, 7)
    assert set(a.train) <= set(task.train) and len(set(a.train)) == 10
    assert a.name == task.name and a.labels == task.labels and task.train == _toy().train  # input untouched


def test_subsample_different_seeds_differ():
    task = _toy()
    assert subsample(task, max_train=10, seed=0).train != subsample(task, max_train=10, seed=1).train


def test_subsample_none_means_no_limit_but_shuffled():
    task = _toy()
    out = subsample(task, seed=0)
    assert sorted(out.train, key=lambda e: e.input) == sorted(task.train, key=lambda e: e.input)
    assert out.train != task.train  # deterministic shuffled order
    assert out.train == subsample(task, seed=0).train


def test_subsample_per_class_caps():
    task = _toy()  # train: a=30, b=15, c=15
    out = subsample(task, max_train_per_class=4, max_test_per_class=2, seed=0)
    assert Counter(e.target for e in out.train) == {"a": 4, "b": 4, "c": 4}
    assert Counter(e.target for e in out.test) == {"a": 2, "b": 2, "c": 2}
    out = subsample(task, max_train_per_class=20, seed=0)
    assert Counter(e.target for e in out.train) == {"a": 20, "b": 15, "c": 15}
    both = subsample(task, max_train_per_class=4, max_train=5, seed=0)
    assert len(both.train) == 5 and max(Counter(e.target for e in both.train).values()) <= 4


def test_subsample_per_class_ignored_for_generation():
    task = _toy(kind=GENERATION)
    out = subsample(task, max_train_per_class=2, seed=0)
    assert len(out.train) == len(task.train)


def test_subsample_depends_on_task_name_not_position():
    t1, t2 = _toy("one"), _toy("two")
    s1 = subsample(t1, max_train=8, seed=0)
    assert [e.input.split()[1] for e in s1.train] != [e.input.split()[1] for e in subsample(t2, max_train=8, seed=0).train]


@pytest.mark.parametrize("kwargs", [{"max_train": 0}, {"max_test": -1}, {"max_train_per_class": 1.5}, {"max_test": True}])
def test_subsample_rejects_bad_caps(kwargs):
    with pytest.raises(ContinualLMError, match=list(kwargs)[0]):
        subsample(_toy(), **kwargs)


def test_subsample_on_real_data_is_independent_of_stream_order(shared_data):
    kw = dict(data_dir=shared_data, max_train=20, max_test=10, seed=7)
    by_order = {o: {t.name: t for t in load_stream("standard", o, **kw)} for o in (1, 3)}
    for name in ("dbpedia", "amazon", "yahoo", "agnews"):
        assert by_order[1][name].train == by_order[3][name].train
        assert by_order[1][name].test == by_order[3][name].test
    again = load_stream("standard", 1, **kw)
    assert [t.train for t in again] == [by_order[1][t.name].train for t in again]
    other_seed = load_stream("standard", 1, **{**kw, "seed": 8})
    assert other_seed[0].train != again[0].train


def test_per_class_caps_on_real_data(shared_data):
    (task,) = load_stream("standard", task_names=["agnews"], data_dir=shared_data, max_train_per_class=5,
                          max_test_per_class=3)
    assert Counter(e.target for e in task.train) == {lab: 5 for lab in task.labels}
    assert Counter(e.target for e in task.test) == {lab: 3 for lab in task.labels}


# ---------------------------------------------------------------------------------------------------------------
# load_stream


def test_load_stream_task_names_override(shared_data):
    stream = load_stream("long", "4", task_names=["sst2", "CB"], data_dir=shared_data, max_train=3, max_test=2)
    assert [t.name for t in stream] == ["sst-2", "cb"]
    with pytest.raises(ContinualLMError, match="appears twice"):
        load_stream("long", task_names=["sst2", "SST-2"], data_dir=shared_data)
    with pytest.raises(ContinualLMError, match="non-empty list"):
        load_stream("long", task_names=[], data_dir=shared_data)


def test_load_stream_superni(shared_data):
    stream = load_stream("superni", "order2", data_dir=shared_data, max_train=4, max_test=2)
    assert [t.name for t in stream] == resolve_order("superni", 2)
    assert {t.metric for t in stream} == {ACCURACY, ROUGE_L}


def test_load_stream_demo_needs_no_data(monkeypatch):
    monkeypatch.delenv(benchmarks.DATA_ENV, raising=False)
    stream = load_stream("demo", max_train=16, seed=1)
    expected = demo_tasks(seed=1)
    assert [t.name for t in stream] == [t.name for t in expected]
    assert all(len(t.train) == 16 for t in stream)
    assert all(set(s.train) <= set(e.train) and set(s.test) == set(e.test) for s, e in zip(stream, expected))
    assert [t.name for t in load_stream("demo", task_names=["reverse", "sentiment"])] == ["reverse", "sentiment"]
    with pytest.raises(ContinualLMError, match="unknown demo task 'sentimen'"):
        load_stream("demo", task_names=["sentimen"])


def test_load_stream_custom(tmp_path):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"input": f"x{i}", "output": f"y{i}"}) + "\n" for i in range(10)))
    stream_file = tmp_path / "s.yaml"
    stream_file.write_text("tasks:\n  - {name: t1, file: d.jsonl}\n  - {name: t2, train: d.jsonl, test: d.jsonl}\n")
    stream = load_stream("custom", stream_file=stream_file, max_train=3)
    assert [t.name for t in stream] == ["t1", "t2"] and all(len(t.train) == 3 for t in stream)
    assert [t.name for t in load_stream("custom", stream_file=stream_file, task_names=["t2", "t1"])] == ["t2", "t1"]
    assert read_task("custom", None, "t2", stream_file=stream_file).name == "t2"
    with pytest.raises(ContinualLMError, match="needs a stream file"):
        load_stream("custom")
    with pytest.raises(ContinualLMError, match="has no orders"):
        load_stream("custom", 1, stream_file=stream_file)
    with pytest.raises(ContinualLMError, match="only used with benchmark 'custom'"):
        load_stream("demo", stream_file=stream_file)
    with pytest.raises(ContinualLMError, match=r"unknown task of stream file .*'t3'"):
        load_stream("custom", stream_file=stream_file, task_names=["t3"])


def test_trace_stream_order_and_subsampling(shared_data):
    assert resolve_order("trace", 1) == ["C-STANCE", "FOMC", "MeetingBank", "Py150", "ScienceQA", "NumGLUE-cm",
                                         "NumGLUE-ds", "20Minuten"]
    stream = load_stream("trace", 1, data_dir=shared_data, max_train=12, max_test=5, max_train_per_class=3, seed=1)
    assert [t.name for t in stream] == resolve_order("trace")
    assert [(len(t.train), len(t.test)) for t in stream] == [(9, 5), (9, 5)] + [(12, 5)] * 6  # 3 per class: A/B/C
    assert Counter(e.target for e in stream[0].train) == {"A": 3, "B": 3, "C": 3}
    again = load_stream("trace", data_dir=shared_data, max_train=12, max_test=5, max_train_per_class=3, seed=1)
    assert [t.test for t in again] == [t.test for t in stream]
    two = load_stream("trace", task_names=["py150", "20minuten"], data_dir=shared_data, max_train=4, max_test=2)
    assert [t.name for t in two] == ["Py150", "20Minuten"]
