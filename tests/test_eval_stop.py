"""Evaluation stops a batch once every row's answer is settled (eval/generate.py ``AnswersSettled``): the same
predictions as decoding the whole budget, fewer steps; and every method's generation uses the KV cache."""
import dataclasses

import pytest
import torch

from continual_lm.data.tasks import AnswerRule
from continual_lm.eval.generate import AnswersSettled, predict_requests
from continual_lm.eval.scores import clean_prediction
from continual_lm.methods.base import TrainExample
from continual_lm.models.backbone import build_byte_tokenizer, load_backbone
from continual_lm.train.assemble import build_runner

from helpers import tiny_config


class Widths:
    """The sequence width of every forward call of a model inside its ``generate`` (not a method's own forward
    passes, e.g. L2P's query or SAPT's selection, before it)."""

    def __init__(self, model):
        self.widths, self.inside, self.kwargs = [], False, []
        self.handle = model.register_forward_pre_hook(self.record, with_kwargs=True)
        self.model, original = model, model.generate

        def generate(*args, **kwargs):
            self.kwargs.append(set(kwargs))
            self.inside = True
            try:
                return original(*args, **kwargs)
            finally:
                self.inside = False

        model.generate = generate

    def record(self, module, args, kwargs):
        if not self.inside:
            return
        inputs = kwargs.get("input_ids") if kwargs.get("inputs_embeds") is None else kwargs["inputs_embeds"]
        if kwargs.get("decoder_input_ids") is not None:  # seq2seq: the decoder's new positions
            inputs = kwargs["decoder_input_ids"]
        self.widths.append(inputs.shape[1])

    def remove(self):
        self.handle.remove()
        del self.model.generate


def _runner(tmp_path, method, model="tiny-random-llama"):
    config = tiny_config(tmp_path, method=method, model=model, max_test_per_task=6, eval_batch_size=4,
                         max_target_length=12)
    runner = build_runner(config, tmp_path / "run", backbone=load_backbone(config.model, seed=config.seed))
    for row in range(2):
        runner.method.before_task(runner.model, row, runner.tasks[row])
        if method == "epi":  # it selects a prompt by the task statistics it stores after a task
            examples = [TrainExample(row, e) for e in runner.tasks[row].train]
            runner.method.after_task(runner.model, row, runner.tasks[row], examples)
    torch.manual_seed(0)
    with torch.no_grad():  # non-zero blocks, so that the method's own path shapes the generations
        for name, p in runner.model.named_parameters():
            if p.requires_grad or "lora_B" in name:
                p.add_(torch.randn_like(p) * 0.5)
    runner.model.eval()
    return runner


def _rules_that_fire(runner, requests):
    """Stop rules that cut this model's generations mid-way: for each generating task, a character from the middle
    of each of its whole answers (and, for every other task, also a two-character string)."""
    whole = [dataclasses.replace(t, answer=AnswerRule(stop=())) if not t.labels else t for t in runner.tasks]
    texts = predict_requests(runner.model, runner.method, runner.collator,
                             [(whole[j], j, text) for _, j, text in requests], 4, progress=False, stop_early=False)
    stops = {}
    for (task, j, _), text in zip(requests, texts):
        # a random byte-level model writes invalid UTF-8 too: "\ufffd" can stand for bytes a later token completes
        inner = [k for k in range(1, len(text) - 1) if text[k] != "\ufffd" and not text[k].isspace()]
        if not task.labels and inner:
            k = inner[len(inner) // 2]
            stops.setdefault(j, []).extend([text[k]] + ([text[k - 1:k + 1]] if j % 2 else []))
    return {j: AnswerRule(stop=tuple(dict.fromkeys(found))) for j, found in stops.items()}


@pytest.mark.parametrize("method,model", [("inclora", "tiny-random-llama"), ("l2p", "tiny-random-llama"),
                                          ("seqlora", "tiny-random-t5")])
def test_settled_batches_predict_what_the_whole_budget_predicts(tmp_path, method, model):
    runner = _runner(tmp_path, method, model)
    requests = [(t, j, e.input) for j, t in enumerate(runner.tasks) for e in t.test]
    rules = _rules_that_fire(runner, requests)
    assert len(rules) >= 1, "no generating task to test"
    tasks = [dataclasses.replace(t, answer=rules[j]) if j in rules else t for j, t in enumerate(runner.tasks)]
    requests = [(tasks[j], j, text) for _, j, text in requests]
    outcome = {}
    for stop_early in (False, True):
        widths = Widths(runner.model)
        predictions = predict_requests(runner.model, runner.method, runner.collator, requests, 4, progress=False,
                                       stop_early=stop_early)
        widths.remove()
        outcome[stop_early] = predictions, len(widths.widths)
    assert outcome[True][0] == outcome[False][0]
    assert outcome[True][1] < outcome[False][1]  # fewer forward passes: batches stopped early
    assert len(set(outcome[True][0])) > 3  # varied answers, several of them cut by the rules


@pytest.mark.parametrize("method", ["seqlora", "amlora", "sapt-lora", "sapt-prompt", "l2p", "epi", "progprompt",
                                    "lfpt5"])
def test_generation_encodes_the_prompt_once_then_one_token_per_step(tmp_path, method):
    runner = _runner(tmp_path, method)
    task = runner.tasks[2]  # a generation task: budget --max-target-length
    requests = [(dataclasses.replace(task, answer=AnswerRule(stop=())), 2, e.input) for e in task.test[:3]]
    widths = Widths(runner.model)
    predict_requests(runner.model, runner.method, runner.collator, requests, 4, progress=False, stop_early=False)
    widths.remove()
    assert all("stopping_criteria" in k for k in widths.kwargs), f"{method}.generate drops stopping_criteria"
    assert len(widths.widths) > 2  # several new tokens
    assert widths.widths[0] > 1, f"{method}: the first pass encodes the prompt"
    assert all(w == 1 for w in widths.widths[1:]), f"{method}: a step re-encoded more than its new token"


def test_a_row_is_settled_only_when_no_stop_string_could_still_cut_it_earlier():
    tokenizer = build_byte_tokenizer(with_bos=False)
    prompt = tokenizer("Q:", add_special_tokens=False)["input_ids"]

    def settled_after(text, stops):
        criterion = AnswersSettled(tokenizer, [stops])
        ids = prompt + tokenizer(text, add_special_tokens=False)["input_ids"]
        flags = [bool(criterion(torch.tensor([ids[:n]]), None)[0]) for n in range(len(prompt) + 1, len(ids) + 1)]
        return flags.index(True) + 1 if True in flags else None  # new tokens generated when it settled

    assert settled_after(" \nyes\nno", ("\n",)) == 6  # a leading newline is dropped first, as clean_prediction does
    assert settled_after("yes", ("\n",)) is None
    assert settled_after("yes", ()) is None  # whole answers: only EOS or the budget end them
    # "c" cuts "abc" at 2, but "abcd" would cut it at 0 once the next token comes: settled only when it is known
    assert settled_after("abcde", ("c", "abcd")) == 4
    assert clean_prediction("abcde", ("c", "abcd")) == ""
    assert settled_after("xxabcx", ("c", "abcd")) == 6
