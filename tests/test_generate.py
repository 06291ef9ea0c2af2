"""Evaluation decodes the test inputs of several tasks in shared batches (eval/generate.py)."""
import torch

from continual_lm.data.collate import Collator
from continual_lm.data.tasks import CLASSIFICATION, AnswerRule, Example, Task
from continual_lm.eval.generate import predict_requests
from continual_lm.models.backbone import build_byte_tokenizer, load_backbone
from continual_lm.train.assemble import build_runner

from helpers import tiny_config


class Recorder:
    """A method that records every generate call and echoes each row's prompt tokens (so a prediction names its
    input)."""

    def __init__(self, uses_task_id_at_test=False):
        self.uses_task_id_at_test = uses_task_id_at_test
        self.calls = []

    def generate(self, model, batch, max_new_tokens, **generate_kwargs):
        self.calls.append({"rows": batch["input_ids"].shape[0], "max_new": max_new_tokens,
                           "task_ids": batch.get("task_ids")})
        return batch["input_ids"]


def _task(name, labels=None, n=5):
    kind = CLASSIFICATION if labels else "generation"
    return Task(name=name, kind=kind, metric="accuracy" if labels else "rougeL", instruction="", labels=labels or [],
                train=[], test=[Example(f"{name} input {i}" + "x" * i, "") for i in range(n)], template="{input}")


def test_tasks_share_batches_grouped_by_generation_length():
    collator = Collator(build_byte_tokenizer(with_bos=False), True, 64, 12, False)
    tasks = [_task("a", labels=["yes", "no"]), _task("b"), _task("c", labels=["no", "yes"]), _task("d")]
    requests = [(t, j, e.input) for j, t in enumerate(tasks) for e in t.test]
    method = Recorder(uses_task_id_at_test=True)
    preds = predict_requests(torch.nn.Linear(1, 1), method, collator, requests, batch_size=8, progress=False)

    assert preds == [text for _, _, text in requests]  # every prediction back in its request's place
    # 20 inputs of 4 tasks: a/c generate their longest label (+ eos + 1), b/d --max-target-length (12); batches
    # never mix the two lengths, so 10 + 10 inputs make 2 + 2 calls instead of 4 x 1
    short = collator.max_new_tokens(tasks[0])
    assert short == collator.max_new_tokens(tasks[2]) < 12 == collator.max_new_tokens(tasks[1])
    assert sorted((c["max_new"], c["rows"]) for c in method.calls) == [(short, 2), (short, 8), (12, 2), (12, 8)]
    expected_max_new = {j: collator.max_new_tokens(t) for j, t in enumerate(tasks)}
    for call in method.calls:  # each row carries its own task's id
        assert {expected_max_new[int(j)] for j in call["task_ids"]} == {call["max_new"]}
    assert sum(len(c["task_ids"]) for c in method.calls) == 20


def test_task_ids_reach_only_methods_that_declare_them():
    collator = Collator(build_byte_tokenizer(with_bos=False), True, 64, 12, False)
    task = _task("a")
    method = Recorder(uses_task_id_at_test=False)
    requests = [(task, 0, e.input) for e in task.test]
    predict_requests(torch.nn.Linear(1, 1), method, collator, requests, 2, progress=False)
    assert [c["rows"] for c in method.calls] == [2, 2, 1]
    assert all(c["task_ids"] is None for c in method.calls)


def test_shared_batches_predict_what_one_task_at_a_time_predicts(tmp_path):
    """A trained tiny model: the stream's tasks decoded together give the per-task predictions."""
    config = tiny_config(tmp_path, method="inclora", max_test_per_task=6, eval_batch_size=4)
    backbone = load_backbone(config.model, seed=config.seed)
    runner = build_runner(config, tmp_path / "run", backbone=backbone)
    torch.manual_seed(0)
    with torch.no_grad():  # non-zero LoRAs, so the predictions depend on the method's path
        for name, p in runner.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    tasks = runner.tasks
    requests = [(t, j, e.input) for j, t in enumerate(tasks) for e in t.test]
    together = predict_requests(runner.model, runner.method, runner.collator, requests, 4, progress=False)
    alone = [p for j, t in enumerate(tasks)
             for p in predict_requests(runner.model, runner.method, runner.collator, [(t, j, e.input) for e in t.test],
                                       4, progress=False)]
    assert together == alone
    assert len(set(together)) > len(tasks)  # real, varied generations, not one constant string


def test_each_row_is_cut_by_its_own_tasks_stop_rule_in_shared_batches():
    """A first-line task and an until-EOS task share one batch; each prediction is cut by its own task's rule."""
    collator = Collator(build_byte_tokenizer(with_bos=False), True, 64, 12, False)
    line, whole, marker = _task("line"), _task("whole"), _task("marker")
    whole.answer = AnswerRule(stop=())
    marker.answer = AnswerRule(stop=("<EOL>",))
    texts = ["B\nbecause it rains", "x = 1 <EOL> y = 2"]
    requests = [(t, j, text) for j, t in enumerate((line, whole, marker)) for text in texts]
    method = Recorder()
    preds = predict_requests(torch.nn.Linear(1, 1), method, collator, requests, batch_size=8, progress=False)
    assert [c["rows"] for c in method.calls] == [6]  # one shared batch
    assert preds == ["B", "x = 1 <EOL> y = 2",  # first line
                     "B\nbecause it rains", "x = 1 <EOL> y = 2",  # up to EOS: whole
                     "B\nbecause it rains", "x = 1"]  # up to the stop string


def _byte_collator(max_input_length=64, max_target_length=12):
    return Collator(build_byte_tokenizer(with_bos=False), False, max_input_length, max_target_length, False)


def test_new_token_budget_from_the_data_capped():
    collator = _byte_collator(max_target_length=30)
    task = _task("g")
    # 20 training answers of 1..20 bytes: target ids = " " + answer + eos = length + 2; 95th percentile (nearest
    # rank: the 19th of 20) = 19 + 2 = 21
    task.train = [Example("q", "a" * n) for n in range(1, 21)]
    task.answer = AnswerRule(max_new_tokens="auto")
    assert collator.max_new_tokens(task) == 21
    assert _byte_collator(max_target_length=16).max_new_tokens(task) == 16  # capped by --max-target-length
    task.answer = AnswerRule(max_new_tokens=7)
    assert collator.max_new_tokens(task) == 7
    task.answer = AnswerRule()
    assert collator.max_new_tokens(task) == 30  # no rule: --max-target-length, as before
    task.answer, task.train = AnswerRule(max_new_tokens="auto"), []
    assert collator.max_new_tokens(task) == 30  # no training answers (an unseen task): the cap
    assert collator.answer_settings(task) == {"stop": ["\n"], "extract": "whole", "max_new_tokens": 30,
                                              "truncate": "end"}


def test_truncation_cuts_the_side_the_task_needs_and_keeps_instruction_cue_and_answer():
    collator = _byte_collator(max_input_length=40, max_target_length=64)
    text = "".join(f"{i:02d}," for i in range(30))  # 90 bytes
    keep_start = Task(name="s", kind="generation", metric="rougeL", instruction="Do:", train=[], test=[],
                      template="{instruction}{input}\nOut:")
    keep_end = Task(name="e", kind="generation", metric="rougeL", instruction="Do:", train=[], test=[],
                    template="{instruction}{input}\nOut:", truncate="start")
    decode = collator.tokenizer.decode
    start = decode(collator.prompt_ids(keep_start, text))
    end = decode(collator.prompt_ids(keep_end, text))
    assert start.startswith("Do:\n00,01,") and start.endswith("\nOut:") and "29," not in start
    assert end.startswith("Do:\n") and end.endswith("28,29,\nOut:") and "00,01," not in end
    assert len(collator.prompt_ids(keep_end, text)) <= 40
    answer = "a long answer " * 3
    encoded = collator.encode_train(keep_end, Example(text, answer), 0)
    kept = [t for t in encoded.labels if t != -100]
    assert decode(kept[:-1]) == " " + answer.strip()  # the whole answer is trained on, prompt cut instead
