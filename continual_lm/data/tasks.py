"""Tasks and examples: the unit a continual-learning stream is made of."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

CLASSIFICATION = "classification"
GENERATION = "generation"
CORPUS = "corpus"  # an unlabelled text corpus (continual pre-training), scored by its end task
ACCURACY = "accuracy"
ROUGE_L = "rougeL"
EDIT_SIM = "edit_sim"  # edit similarity of code (TRACE's Py150), 0..100
SARI = "sari"  # text simplification (TRACE's 20Minuten), against the source and the references

# What of an answer is compared (AnswerRule.extract), applied to the prediction and to every reference alike.
WHOLE = "whole"  # the whole answer
LETTER = "letter"  # its first character: the choice letter in front of a reasoning (TRACE's ScienceQA)
NUMBER = "number"  # its first number ("about 1,200.50 m" -> "1200.5"); the whole answer when it has none
CODE_LITERALS = "code_literals"  # Py150's literal placeholders replaced as TRACE's evaluation does
EXTRACTS = (WHOLE, LETTER, NUMBER, CODE_LITERALS)

# Which end of an over-long input text is cut (Task.truncate); the instruction and the answer cue always stay.
CUT_END = "end"  # keep the input's start (the default of every benchmark before TRACE)
CUT_START = "start"  # keep its end (code completion: the lines right before the one to write)
TRUNCATE_SIDES = (CUT_END, CUT_START)

AUTO = "auto"  # AnswerRule.max_new_tokens: from the data (collate.py: a high percentile of the answers' lengths)

# The O-LoRA / MIGU reference prompt: instruction + "Option: " + ", ".join(labels) + " \n" + sentence + "\nAnswer:".
DEFAULT_TEMPLATE = "{instruction}{options}{input}\nAnswer:"
# The SuperNI prompt used by SAPT ("Definition: ...\n\nNow complete ..."): Task.prompt ends a non-empty
# instruction with one newline, so the template adds the second.
SUPERNI_TEMPLATE = "Definition: {instruction}\nNow complete the following example -\nInput: {input}\nOutput:"


@dataclass(frozen=True)
class Example:
    input: str
    target: str  # the reference used as training target
    references: tuple[str, ...] = ()  # every acceptable reference for scoring; empty means (target,)

    def refs(self) -> tuple[str, ...]:
        return self.references or (self.target,)


@dataclass(frozen=True)
class AnswerRule:
    """Where a generated answer ends and what of it is scored: a property of the task (docs/benchmarks.md).

    ``stop``: the answer is the generation up to the first of these strings (generation always ends at EOS and
    at the task's new-token budget); ``()`` keeps everything up to EOS (multi-line answers). The default, the
    first line, is the rule of every benchmark before TRACE. ``extract``: what is compared (``WHOLE``, ``LETTER``,
    ``NUMBER``, ``CODE_LITERALS``). ``max_new_tokens``: ``None`` = the longest label + 1 for classification,
    ``--max-target-length`` otherwise; a number, or ``AUTO`` (from the task's training answers); always capped by
    ``--max-target-length``."""

    stop: tuple[str, ...] = ("\n",)
    extract: str = WHOLE
    max_new_tokens: int | str | None = None


@dataclass
class Task:
    name: str
    kind: str  # CLASSIFICATION, GENERATION or CORPUS
    metric: str  # ACCURACY, ROUGE_L, EDIT_SIM or SARI
    instruction: str
    train: list[Example]
    test: list[Example]
    labels: list[str] | None = None
    template: str = DEFAULT_TEMPLATE
    source: str = ""  # where the task was read from, for messages and reports
    extra: dict = field(default_factory=dict)
    answer: AnswerRule = field(default_factory=AnswerRule)
    truncate: str = CUT_END  # which end of an over-long input text is cut (CUT_END or CUT_START)

    def prompt(self, text: str, task_name_in_prompt: bool = False) -> str:
        """The model input for one example's input text. The task name appears only when asked for."""
        instruction = self.instruction
        if instruction and not instruction.endswith("\n"):
            instruction += "\n"
        options = f"Option: {', '.join(self.labels)} \n" if self.labels and "{options}" in self.template else ""
        prompt = self.template.format(instruction=instruction, options=options, input=text)
        return f"Task: {self.name}\n{prompt}" if task_name_in_prompt else prompt

    def with_examples(self, train: list[Example] | None = None, test: list[Example] | None = None) -> "Task":
        return replace(self, train=self.train if train is None else train, test=self.test if test is None else test)
