import json
from pathlib import Path

import pytest

from continual_lm.data.formats import (
    CLBENCHMARK_INSTRUCTIONS,
    read_clbenchmark_task,
    read_custom_stream,
    read_records,
    read_superni_task,
    read_trace_task,
)
from continual_lm.data.tasks import (
    ACCURACY,
    CLASSIFICATION,
    DEFAULT_TEMPLATE,
    EDIT_SIM,
    GENERATION,
    ROUGE_L,
    SARI,
    SUPERNI_TEMPLATE,
    AnswerRule,
)
from continual_lm.errors import ContinualLMError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(rows) -> str:
    return "\n".join(json.dumps(r) for r in rows) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# read_records


def test_read_records_json_list_and_jsonl(tmp_path):
    rows = [{"input": "a", "output": "b"}, {"input": "c", "output": ["d", "e"]}]
    assert read_records(write(tmp_path / "x.json", json.dumps(rows, indent=2))) == rows
    assert read_records(write(tmp_path / "x.jsonl", "\n" + jsonl(rows[:1]) + "\n  \n" + jsonl(rows[1:]))) == rows
    assert read_records(write(tmp_path / "one.jsonl", json.dumps(rows[0]))) == rows[:1]
    assert read_records(write(tmp_path / "empty.jsonl", "\n\n")) == []


def test_read_records_malformed_jsonl_names_file_and_line(tmp_path):
    path = write(tmp_path / "bad.jsonl", '{"input": "a"}\n\n{"input": "b",}\n')
    with pytest.raises(ContinualLMError) as e:
        read_records(path)
    assert str(path) in str(e.value) and "line 3" in str(e.value)


def test_read_records_malformed_json_list_names_position(tmp_path):
    path = write(tmp_path / "bad.json", '[\n {"input": "a"},\n {"input": }\n]')
    with pytest.raises(ContinualLMError) as e:
        read_records(path)
    assert str(path) in str(e.value) and "line 3" in str(e.value) and "column" in str(e.value)


def test_read_records_non_object_record_names_index(tmp_path):
    path = write(tmp_path / "list.json", json.dumps([{"a": 1}, {"a": 2}, "oops"]))
    with pytest.raises(ContinualLMError, match=r"record 2 is a string, expected a JSON object") as e:
        read_records(path)
    assert str(path) in str(e.value)
    path = write(tmp_path / "lines.jsonl", '{"a": 1}\n[1, 2]\n')
    with pytest.raises(ContinualLMError, match=r"line 2: record 1 is a list") as e:
        read_records(path)
    assert str(path) in str(e.value)


def test_read_records_single_pretty_object_and_missing_file(tmp_path):
    path = write(tmp_path / "obj.json", '{\n  "data": []\n}\n')
    with pytest.raises(ContinualLMError, match="single JSON object"):
        read_records(path)
    with pytest.raises(ContinualLMError, match="not found") as e:
        read_records(tmp_path / "nope.jsonl")
    assert "nope.jsonl" in str(e.value)


# ---------------------------------------------------------------------------------------------------------------
# CL_Benchmark on the real data

_cache: dict = {}


def cl_task(data_dir, name):
    key = (str(data_dir), name)
    if key not in _cache:
        _cache[key] = read_clbenchmark_task(data_dir, name)
    return _cache[key]


def test_clbenchmark_agnews_counts_labels_and_fields(shared_data):
    task = cl_task(shared_data, "agnews")
    assert (len(task.train), len(task.test)) == (4000, 7600)
    assert task.name == "agnews"
    assert task.labels == json.loads((shared_data / "CL_Benchmark/TC/agnews/labels.json").read_text())
    assert (task.kind, task.metric, task.template) == (CLASSIFICATION, ACCURACY, DEFAULT_TEMPLATE)
    assert task.extra["family"] == "TC"
    assert task.source == str(shared_data / "CL_Benchmark" / "TC" / "agnews")
    first = json.loads((shared_data / "CL_Benchmark/TC/agnews/train.json").read_text())[0]
    assert (task.train[0].input, task.train[0].target) == (first["sentence"], first["label"])
    assert all(ex.target in task.labels for ex in task.train + task.test)


def test_clbenchmark_prompt_is_the_reference_prompt(shared_data):
    task = cl_task(shared_data, "agnews")
    config = json.loads((shared_data / "CL_Benchmark_configs/instruction_config.json").read_text())
    instruction = config["TC"][0]["instruction"]
    ex = task.test[5]
    expected = instruction + "Option: " + ", ".join(task.labels) + " \n" + ex.input + "\nAnswer:"
    assert task.prompt(ex.input) == expected
    assert "agnews" not in task.prompt(ex.input)
    assert task.prompt(ex.input, task_name_in_prompt=True).startswith("Task: agnews\n")


def test_builtin_instructions_are_verbatim_copies(shared_data):
    config = json.loads((shared_data / "CL_Benchmark_configs/instruction_config.json").read_text())
    assert CLBENCHMARK_INSTRUCTIONS == {family: entries[0]["instruction"] for family, entries in config.items()}


def test_clbenchmark_names_case_insensitive_and_sapt_aliases(shared_data):
    sst = cl_task(shared_data, "sst2")
    assert sst.name == "sst-2" and (len(sst.train), len(sst.test)) == (2000, 872)
    assert sst.extra["family"] == "SC" and sst.labels == ["Good", "Bad"]
    assert read_clbenchmark_task(shared_data, "SST-2").train == sst.train
    boolq = cl_task(shared_data, "boolq")
    assert boolq.name == "boolqa" and (len(boolq.train), len(boolq.test)) == (2000, 3270)
    assert read_clbenchmark_task(shared_data, "BoolQA").name == "boolqa"
    assert read_clbenchmark_task(shared_data, "CB").name == "cb"


def test_clbenchmark_copa_prompt_has_no_instruction_or_options(shared_data):
    # O-LoRA's load_COPA_dataset builds sentence + "\nAnswer:" (the sentence carries its own question)
    task = cl_task(shared_data, "copa")
    assert (len(task.train), len(task.test)) == (400, 100) and task.labels == ["A", "B"]
    ex = task.train[0]
    assert task.prompt(ex.input) == ex.input + "\nAnswer:"


def test_clbenchmark_mnli_no_gold_label_records_are_skipped(shared_data):
    task = cl_task(shared_data, "mnli")
    raw = json.loads((shared_data / "CL_Benchmark/NLI/MNLI/test.json").read_text())
    n_dash = sum(r["label"] == "-" for r in raw)
    assert len(raw) == 7600 and n_dash > 0
    assert len(task.test) == 7600 - n_dash and len(task.train) == 3000
    assert task.extra["skipped_no_gold_label"] == {"train": 0, "test": n_dash}
    assert all(ex.target in task.labels for ex in task.test)


def test_clbenchmark_builtin_instruction_used_without_config(tmp_clbenchmark):
    task = read_clbenchmark_task(tmp_clbenchmark, "GOOD")
    assert task.name == "good" and (len(task.train), len(task.test)) == (6, 4)  # dev.json ignored
    assert task.instruction == CLBENCHMARK_INSTRUCTIONS["TC"]
    assert task.prompt("hello") == CLBENCHMARK_INSTRUCTIONS["TC"] + "Option: a, b \nhello\nAnswer:"


def test_clbenchmark_instruction_config_is_used_when_present(tmp_clbenchmark):
    write(tmp_clbenchmark / "CL_Benchmark_configs/instruction_config.json",
          json.dumps({"TC": [{"instruction_type": "zero-shot", "instruction": "Pick a topic.\n"}]}))
    assert read_clbenchmark_task(tmp_clbenchmark, "good").instruction == "Pick a topic.\n"


def test_clbenchmark_bad_label_names_file_index_label_and_allowed(tmp_clbenchmark):
    with pytest.raises(ContinualLMError) as e:
        read_clbenchmark_task(tmp_clbenchmark, "badlabel")
    msg = str(e.value)
    assert str(tmp_clbenchmark / "CL_Benchmark/SC/badlabel/test.json") in msg
    assert "record 1" in msg and "'c'" in msg and "'a', 'b'" in msg


def test_clbenchmark_malformed_json_names_file_and_line(tmp_clbenchmark):
    with pytest.raises(ContinualLMError) as e:
        read_clbenchmark_task(tmp_clbenchmark, "malformed")
    assert str(tmp_clbenchmark / "CL_Benchmark/NLI/malformed/train.json") in str(e.value)
    assert "line 3" in str(e.value)


def test_clbenchmark_empty_split_is_an_error(tmp_clbenchmark):
    with pytest.raises(ContinualLMError, match="empty") as e:
        read_clbenchmark_task(tmp_clbenchmark, "empty")
    assert str(tmp_clbenchmark / "CL_Benchmark/TC/empty/test.json") in str(e.value)


def test_clbenchmark_missing_labels_file(tmp_clbenchmark):
    with pytest.raises(ContinualLMError, match="not found") as e:
        read_clbenchmark_task(tmp_clbenchmark, "nolabels")
    assert "labels.json" in str(e.value)


def test_clbenchmark_missing_task_lists_available_and_path(tmp_clbenchmark):
    with pytest.raises(ContinualLMError) as e:
        read_clbenchmark_task(tmp_clbenchmark, "goood")
    msg = str(e.value)
    assert "'goood'" in msg and str(tmp_clbenchmark / "CL_Benchmark") in msg
    assert "good" in msg and "badlabel" in msg and "Did you mean 'good'" in msg


def test_clbenchmark_missing_root_names_path(tmp_path):
    with pytest.raises(ContinualLMError) as e:
        read_clbenchmark_task(tmp_path, "agnews")
    assert str(tmp_path / "CL_Benchmark") in str(e.value)


def test_clbenchmark_record_missing_field(tmp_clbenchmark):
    write(tmp_clbenchmark / "CL_Benchmark/TC/good/test.json", json.dumps([{"label": "a", "sentence": "x"}, {"label": "b"}]))
    with pytest.raises(ContinualLMError, match=r"record 1 has no 'sentence' field") as e:
        read_clbenchmark_task(tmp_clbenchmark, "good")
    assert "good/test.json" in str(e.value)


# ---------------------------------------------------------------------------------------------------------------
# SuperNI on the real data


def test_superni_generation_task(shared_data):
    task = read_superni_task(shared_data, "task1572_samsum_summary")
    assert (len(task.train), len(task.test)) == (160, 20)
    assert (task.kind, task.metric, task.labels, task.template) == (GENERATION, ROUGE_L, None, SUPERNI_TEMPLATE)
    raw = json.loads((shared_data / "SuperNI/task1572_samsum_summary/train.json").read_text())
    assert task.instruction == " ".join(raw["Definition"])
    assert task.train[0].input == raw["Instances"][0]["input"]
    assert task.train[0].target == raw["Instances"][0]["output"][0]
    ex = task.test[0]
    prompt = task.prompt(ex.input)
    assert prompt.startswith(f"Definition: {task.instruction}\n")
    assert prompt.endswith(f"\nNow complete the following example -\nInput: {ex.input}\nOutput:")
    assert "task1572" not in prompt


def test_superni_prompt_is_the_reference_prompt(shared_data):
    task = read_superni_task(shared_data, "task591_sciq_answer_generation")
    ex = task.test[0]
    assert task.prompt(ex.input) == (
        f"Definition: {task.instruction}\n\nNow complete the following example -\nInput: {ex.input}\nOutput:"
    )


def test_superni_list_outputs_give_multiple_references(shared_data):
    task = read_superni_task(shared_data, "task748_glucose_reverse_cause_event_detection")
    multi = [ex for ex in task.train if len(ex.refs()) > 1]
    assert multi, "task748 has instances with several reference outputs"
    assert all(ex.target == ex.refs()[0] for ex in multi)


def test_superni_classification_tasks(shared_data):
    task = read_superni_task(shared_data, "task363_sst2_polarity_classification")
    assert (task.kind, task.metric, task.labels) == (CLASSIFICATION, ACCURACY, ["NEG", "POS"])
    assert (len(task.train), len(task.test)) == (1000, 100)
    emo = read_superni_task(shared_data, "TASK875_emotion_classification")
    assert emo.name == "task875_emotion_classification"
    assert emo.labels == sorted({ex.target for ex in emo.train}) and len(emo.labels) == 6


def _superni_file(tmp_path, name="task1_x", **overrides):
    data = {"Definition": ["Do", "it."], "Instances": [{"id": "1", "input": "a", "output": ["b"]}]}
    data.update(overrides)
    for split in ("train", "test"):
        write(tmp_path / "SuperNI" / name / f"{split}.json", json.dumps({k: v for k, v in data.items() if v is not None}))


def test_superni_errors_name_file_and_field(tmp_path):
    _superni_file(tmp_path)
    assert read_superni_task(tmp_path, "task1_x").instruction == "Do it."
    _superni_file(tmp_path, Definition=None)
    with pytest.raises(ContinualLMError, match="missing field 'Definition'") as e:
        read_superni_task(tmp_path, "task1_x")
    assert str(tmp_path / "SuperNI/task1_x/train.json") in str(e.value)
    _superni_file(tmp_path, Instances=[{"id": "1", "input": "a", "output": []}])
    with pytest.raises(ContinualLMError, match=r"Instances\[0\] field 'output'"):
        read_superni_task(tmp_path, "task1_x")
    _superni_file(tmp_path, Instances=[{"id": "1", "output": "b"}])
    with pytest.raises(ContinualLMError, match=r"Instances\[0\] has no 'input' field"):
        read_superni_task(tmp_path, "task1_x")
    with pytest.raises(ContinualLMError) as e:
        read_superni_task(tmp_path, "task2_y")
    assert "task1_x" in str(e.value) and str(tmp_path / "SuperNI") in str(e.value)


# ---------------------------------------------------------------------------------------------------------------
# custom streams


def _stream(tmp_path, yaml_text: str) -> Path:
    return write(tmp_path / "stream.yaml", yaml_text)


@pytest.fixture
def custom_files(tmp_path):
    write(tmp_path / "data/train.jsonl", jsonl([{"text": f"t{i}", "label": "yes" if i % 2 else "no"} for i in range(6)]))
    write(tmp_path / "data/test.json", json.dumps([{"text": "u1", "label": "yes"}, {"text": "u2", "label": "no"}]))
    write(tmp_path / "data/gen.jsonl", jsonl([{"input": f"q{i}", "output": [f"a{i}", f"alt{i}"]} for i in range(10)]))
    return tmp_path


def test_custom_stream_full_example(custom_files):
    path = _stream(custom_files, """
tasks:
  - name: yesno
    train: data/train.jsonl
    test: data/test.json
    input_field: text
    output_field: label
    instruction: "Answer yes or no."
    labels: auto
  - name: gen
    file: data/gen.jsonl
    test_fraction: 0.3
    template: "Q: {input}\\nA:"
""")
    yesno, gen = read_custom_stream(path)
    assert (yesno.name, yesno.kind, yesno.metric, yesno.labels) == ("yesno", CLASSIFICATION, ACCURACY, ["no", "yes"])
    assert (len(yesno.train), len(yesno.test)) == (6, 2)
    assert yesno.prompt("hi") == "Answer yes or no.\nOption: no, yes \nhi\nAnswer:"
    assert (gen.kind, gen.metric, gen.labels) == (GENERATION, ROUGE_L, None)
    assert (len(gen.train), len(gen.test)) == (7, 3)
    assert {ex.input for ex in gen.train}.isdisjoint(ex.input for ex in gen.test)
    assert all(len(ex.refs()) == 2 for ex in gen.train)
    assert gen.prompt("x") == "Q: x\nA:"
    again = read_custom_stream(path)[1]
    assert again.test == gen.test  # seeded split


def test_custom_stream_explicit_labels_and_metric(custom_files):
    path = _stream(custom_files, """
tasks:
  - {name: yesno, train: data/train.jsonl, test: data/test.json, input_field: text, output_field: label,
     labels: ["yes", "no", maybe], metric: rougeL}
""")
    (task,) = read_custom_stream(path)
    assert task.labels == ["yes", "no", "maybe"] and task.metric == ROUGE_L and task.kind == GENERATION


@pytest.mark.parametrize(
    "yaml_text, expected",
    [
        ("tasks:\n  - {name: a, train: data/train.jsonl, test: data/test.json, colour: red}", r"task 'a'.*unknown key.*'colour'"),
        ("tasks:\n  - {train: data/train.jsonl, test: data/test.json}", r"tasks\[0\]: missing required key 'name'"),
        ("tasks:\n  - {name: a, test: data/test.json}", r"task 'a'.*missing required key 'train'"),
        ("tasks:\n  - {name: a, train: data/train.jsonl, test: data/test.json}", r"task 'a'.*train.jsonl: record 0 has no field 'input'"),
        ("tasks:\n  - {name: a, train: data/train.jsonl, test: data/test.json, input_field: text, output_field: label,"
         " metric: f1}", r"task 'a'.*unknown metric 'f1'.*accuracy, edit_sim, rougeL, sari"),
        ("tasks:\n  - {name: a, train: data/train.jsonl, test: data/empty.jsonl, input_field: text, output_field: label}",
         r"task 'a'.*test split .*empty.jsonl.* has no records"),
        ("tasks:\n  - {name: a, train: data/train.jsonl, test: data/test.json, input_field: text, output_field: label,"
         " labels: ['yes']}", r"task 'a'.*train record 0 .*output 'no'.*not one of the labels: 'yes'"),
        ("tasks:\n  - {name: a, train: data/train.jsonl, test: data/test.json, input_field: text, output_field: label,"
         " labels: [yes, no]}", r"task 'a'.*'labels'.*YAML reads unquoted yes/no"),
        ("tasks:\n  - {name: a, train: data/train.jsonl, test: data/missing.jsonl}", r"task 'a'.*'test' file not found.*missing.jsonl"),
        ("tasks:\n  - {name: a, file: data/gen.jsonl}\n  - {name: a, file: data/gen.jsonl}", r"tasks\[1\]: duplicate task name 'a'"),
        ("tasks:\n  - {name: a, file: data/gen.jsonl, template: 'Q: {question}'}", r"task 'a'.*unknown placeholder.*\{question\}"),
        ("tasks:\n  - {name: a, file: data/gen.jsonl, test_fraction: 1.5}", r"task 'a'.*'test_fraction' must be a number between 0 and 1"),
        ("tasks: []", r"'tasks' must be a non-empty list"),
        ("stream:\n  - {name: a}", r"unknown top-level key\(s\) 'stream'"),
        ("tasks: [\n", r"invalid YAML"),
    ],
)
def test_custom_stream_errors_name_file_task_and_key(custom_files, yaml_text, expected):
    write(custom_files / "data/empty.jsonl", "")
    path = _stream(custom_files, yaml_text)
    with pytest.raises(ContinualLMError, match=expected) as e:
        read_custom_stream(path)
    assert str(path) in str(e.value)


def test_custom_stream_test_label_outside_auto_labels(custom_files):
    write(custom_files / "data/test2.jsonl", jsonl([{"text": "z", "label": "maybe"}]))
    path = _stream(custom_files, "tasks:\n  - {name: a, train: data/train.jsonl, test: data/test2.jsonl, "
                                 "input_field: text, output_field: label, labels: auto}")
    with pytest.raises(ContinualLMError, match=r"test record 0 .*test2.jsonl.*'maybe'.*'no', 'yes'"):
        read_custom_stream(path)


def test_custom_stream_missing_file(tmp_path):
    with pytest.raises(ContinualLMError, match="stream file not found") as e:
        read_custom_stream(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(e.value)


def test_custom_stream_answer_rules(custom_files):
    path = _stream(custom_files, r"""
tasks:
  - {name: default, file: data/gen.jsonl}
  - {name: multi, file: data/gen.jsonl, stop: eos, extract: letter, max_new_tokens: auto, truncate: start,
     metric: edit_sim}
  - {name: strings, file: data/gen.jsonl, stop: ["###", "\n\n"], extract: number, max_new_tokens: 40, metric: sari}
""")
    default, multi, strings = read_custom_stream(path)
    assert (default.answer, default.truncate) == (AnswerRule(), "end")  # the rule of every benchmark before TRACE
    assert default.answer.stop == ("\n",)
    assert (multi.answer, multi.truncate, multi.metric) == (AnswerRule((), "letter", "auto"), "start", "edit_sim")
    assert (strings.answer, strings.metric) == (AnswerRule(("###", "\n\n"), "number", 40), "sari")


@pytest.mark.parametrize("entry, expected", [
    ("stop: 3", r"'stop' must be 'line'.*'eos'.*got 3"),
    ("stop: []", r"'stop' must be"),
    ("extract: first_word", r"task 'a'.*unknown extract 'first_word'.*code_literals, letter, number, whole"),
    ("max_new_tokens: 0", r"'max_new_tokens' must be a positive integer or 'auto'"),
    ("max_new_tokens: lots", r"'max_new_tokens' must be"),
    ("truncate: middle", r"'truncate' must be 'end'.*or 'start'.*got 'middle'"),
])
def test_custom_stream_answer_rule_errors(custom_files, entry, expected):
    path = _stream(custom_files, f"tasks:\n  - {{name: a, file: data/gen.jsonl, {entry}}}\n")
    with pytest.raises(ContinualLMError, match=expected):
        read_custom_stream(path)


# ---------------------------------------------------------------------------------------------------------------
# TRACE


def test_trace_tasks_rebuild_the_released_prompts_and_carry_the_paper_metrics(shared_data):
    expected = {"C-STANCE": (ACCURACY, "whole", "end"), "FOMC": (ACCURACY, "whole", "end"),
                "MeetingBank": (ROUGE_L, "whole", "end"), "Py150": (EDIT_SIM, "code_literals", "start"),
                "ScienceQA": (ACCURACY, "letter", "end"), "NumGLUE-cm": (ACCURACY, "whole", "end"),
                "NumGLUE-ds": (ACCURACY, "whole", "end"), "20Minuten": (SARI, "whole", "end")}
    sizes = {"MeetingBank": (100, 100), "NumGLUE-cm": (500, 81)}
    for name, (metric, extract, truncate) in expected.items():
        task = read_trace_task(shared_data, name.lower())  # names match case-insensitively
        raw = json.loads((shared_data / "TRACE" / name / "test.json").read_text())
        assert task.name == name and (len(task.train), len(task.test)) == sizes.get(name, (500, 100))
        assert [task.prompt(e.input) for e in task.test] == [r["prompt"] for r in raw]  # exactly the released prompt
        assert [e.target for e in task.test] == [r["answer"].strip() for r in raw]
        assert (task.metric, task.answer.extract, task.truncate) == (metric, extract, truncate)
        assert task.answer.stop == () and task.answer.max_new_tokens == "auto"  # answers run to EOS
    stance = read_trace_task(shared_data, "C-STANCE")
    assert stance.kind == CLASSIFICATION and stance.labels == ["A", "B", "C"]
    assert stance.instruction.startswith("判断以下文本对指定对象的态度") and stance.template.endswith("\n态度：")
    science = read_trace_task(shared_data, "ScienceQA")
    assert science.kind == GENERATION and science.test[0].target[:2] == "B\n"  # letter, then the reasoning lines
    assert science.instruction.endswith("Question:\n") and science.template == "{instruction}{input}\n\nAnswer:"
    py150 = read_trace_task(shared_data, "Py150")
    assert py150.instruction == "" and py150.template == "{instruction}{input}"  # no common frame: all input


def test_trace_errors_name_the_folder_and_record(tmp_path):
    with pytest.raises(ContinualLMError, match=r"TRACE data not found.*TRACE/<task>"):
        read_trace_task(tmp_path, "FOMC")
    write(tmp_path / "TRACE/FOMC/train.json", json.dumps([{"prompt": "p\nq", "answer": 3}]))
    write(tmp_path / "TRACE/FOMC/test.json", json.dumps([{"prompt": "p\nq", "answer": "A"}]))
    with pytest.raises(ContinualLMError, match=r"train.json: record 0 field 'answer' \(a int\)"):
        read_trace_task(tmp_path, "FOMC")
    with pytest.raises(ContinualLMError, match=r"unknown TRACE task 'fomcc'.*FOMC"):
        read_trace_task(tmp_path, "fomcc")
