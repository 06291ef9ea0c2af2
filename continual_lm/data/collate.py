"""Tokenisation and padding for training and generation, for causal and seq2seq models.

Causal LM:  input = prompt + " " + target + eos, loss only on the target tokens (prompt labels are -100),
            right-padded for training, left-padded for generation.
Seq2seq:    encoder input = prompt, labels = target + eos.
Over-long prompts are shortened inside the example's *input* text, so the instruction, the options and the
final "Answer:"/"Output:" cue survive truncation; ``Task.truncate`` says which end of the input is cut (its end by
default; its start for code completion, whose next line follows the end of the context). The answer is never cut
to make room for the prompt: it has its own budget, ``max_target_length`` tokens.
New tokens at evaluation (``max_new_tokens``): the longest label + 1 for classification; otherwise the task's
``AnswerRule.max_new_tokens``: a number, or ``auto`` = the 95th percentile of the token lengths of its training
answers (with their EOS); ``max_target_length`` when it gives none; never more than ``max_target_length``.
Corpus blocks (continual pre-training, task.kind == "corpus"): the block's tokens (with the tokenizer's special
tokens, at most max_input_length); decoders learn every token (causal LM, padding -100), encoder-only models
learn the tokens ``mask_tokens`` picks per batch (masked LM, ``mlm_probability``, drawn from ``mlm_generator``,
which the loop re-seeds every phase).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .corpus import mask_tokens
from .tasks import AUTO, CORPUS, CUT_START, Example, Task

IGNORE_INDEX = -100
ANSWER_LENGTH_PERCENTILE = 95  # AnswerRule.max_new_tokens == "auto": this percentile of the training answers' lengths


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int] | None = None
    task_index: int = -1


class Collator:
    def __init__(self, tokenizer, is_seq2seq: bool, max_input_length: int, max_target_length: int,
                 task_name_in_prompt: bool = False, is_encoder_only: bool = False, mlm_probability: float = 0.15):
        self.tokenizer = tokenizer
        self.is_encoder_only = is_encoder_only
        self.mlm_probability = mlm_probability
        self.mlm_generator = torch.Generator()
        self.is_seq2seq = is_seq2seq
        self.max_input_length = max_input_length
        self.max_target_length = max_target_length
        self.task_name_in_prompt = task_name_in_prompt
        self.pad_id = tokenizer.pad_token_id
        self.eos_id = tokenizer.eos_token_id
        self._answer_lengths: dict[tuple, int] = {}  # "auto" new-token budgets, per task

    # ---- encoding --------------------------------------------------------------------------------------------
    def _ids(self, text: str, special: bool) -> list[int]:
        # verbose=False: a whole over-long prompt is tokenized before it is cut to max_input_length, which must not
        # warn that the model would be fed more than its maximum length
        return self.tokenizer(text, add_special_tokens=special, verbose=False)["input_ids"]

    def prompt_ids(self, task: Task, text: str) -> list[int]:
        prompt = task.prompt(text, self.task_name_in_prompt).rstrip(" ")
        ids = self._ids(prompt, special=True)
        over = len(ids) - self.max_input_length
        if over > 0:
            text_ids = self._ids(text, special=False)
            keep = max(0, len(text_ids) - over - 2)
            kept = (text_ids[len(text_ids) - keep:] if keep else []) if task.truncate == CUT_START else text_ids[:keep]
            shortened = self.tokenizer.decode(kept, skip_special_tokens=True)
            ids = self._ids(task.prompt(shortened, self.task_name_in_prompt).rstrip(" "), special=True)
            if len(ids) > self.max_input_length:  # the template alone is too long: keep its end (the cue)
                ids = ids[-self.max_input_length:]
        return ids

    def target_ids(self, target: str) -> list[int]:
        text = target.strip() if self.is_seq2seq else " " + target.strip()
        ids = self._ids(text, special=False)[: self.max_target_length - 1]
        return ids + [self.eos_id]

    def encode_train(self, task: Task, example: Example, task_index: int) -> Encoded:
        if task.kind == CORPUS:  # a token block: a decoder learns every token; masked LM labels come in train_batch
            ids = self.tokenizer(example.input, truncation=True, max_length=self.max_input_length)["input_ids"]
            return Encoded(ids, None if self.is_encoder_only else list(ids), task_index)
        prompt = self.prompt_ids(task, example.input)
        target = self.target_ids(example.target)
        if self.is_seq2seq:
            return Encoded(prompt, target, task_index)
        return Encoded(prompt + target, [IGNORE_INDEX] * len(prompt) + target, task_index)

    def encode_prompt(self, task: Task, example: Example, task_index: int = -1) -> Encoded:
        return Encoded(self.prompt_ids(task, example.input), None, task_index)

    # ---- padding ---------------------------------------------------------------------------------------------
    def _pad(self, rows: list[list[int]], value: int, left: bool) -> torch.Tensor:
        width = max(len(r) for r in rows)
        padded = [([value] * (width - len(r)) + r) if left else (r + [value] * (width - len(r))) for r in rows]
        return torch.tensor(padded, dtype=torch.long)

    def _mask(self, rows: list[list[int]], left: bool) -> torch.Tensor:
        return self._pad([[1] * len(r) for r in rows], 0, left)

    def train_batch(self, items: list[Encoded]) -> dict[str, torch.Tensor]:
        inputs = [e.input_ids for e in items]
        input_ids, attention_mask = self._pad(inputs, self.pad_id, left=False), self._mask(inputs, left=False)
        if items[0].labels is None:  # masked LM on corpus blocks
            input_ids, labels = mask_tokens(input_ids, attention_mask, mask_token_id=self.tokenizer.mask_token_id,
                                            vocab_size=len(self.tokenizer), probability=self.mlm_probability,
                                            special_ids=self.tokenizer.all_special_ids, generator=self.mlm_generator)
        else:
            labels = self._pad([e.labels for e in items], IGNORE_INDEX, left=False)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "task_ids": torch.tensor([e.task_index for e in items], dtype=torch.long),
        }

    def generation_batch(self, items: list[Encoded]) -> dict[str, torch.Tensor]:
        left = not self.is_seq2seq
        inputs = [e.input_ids for e in items]
        return {"input_ids": self._pad(inputs, self.pad_id, left=left), "attention_mask": self._mask(inputs, left=left)}

    def max_new_tokens(self, task: Task) -> int:
        """Classification: the longest label (+eos) + 1; otherwise the task's ``AnswerRule.max_new_tokens`` (a
        number, or ``auto``: the 95th percentile of its training answers' token lengths); --max-target-length when
        it gives none, and at most --max-target-length."""
        if task.labels:
            return min(self.max_target_length, max(len(self.target_ids(label)) for label in task.labels) + 1)
        budget = task.answer.max_new_tokens
        if budget == AUTO:
            budget = self._answer_length(task)
        return self.max_target_length if budget is None else min(self.max_target_length, budget)

    def _answer_length(self, task: Task) -> int | None:
        """The ANSWER_LENGTH_PERCENTILE-th percentile (nearest rank) of the token lengths of ``task``'s training
        answers with their EOS (each at most max_target_length); None without training examples."""
        key = (task.name, task.source, len(task.train))
        if key not in self._answer_lengths:
            lengths = sorted(len(self.target_ids(e.target)) for e in task.train)
            rank = math.ceil(ANSWER_LENGTH_PERCENTILE / 100 * len(lengths)) - 1
            self._answer_lengths[key] = lengths[max(rank, 0)] if lengths else None
        return self._answer_lengths[key]

    def answer_settings(self, task: Task) -> dict:
        """How ``task``'s answers are generated and compared in this run (recorded in results.json)."""
        return {"stop": list(task.answer.stop), "extract": task.answer.extract,
                "max_new_tokens": self.max_new_tokens(task), "truncate": task.truncate}
