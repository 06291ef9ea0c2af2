"""Tasks and examples: the unit a continual-learning stream is made of."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

CLASSIFICATION = "classification"
GENERATION = "generation"
CORPUS = "corpus"  # an unlabelled text corpus (continual pre-training), scored by its end task
ACCURACY = "accuracy"
ROUGE_L = "rougeL"

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


@dataclass
class Task:
    name: str
    kind: str  # CLASSIFICATION, GENERATION or CORPUS
    metric: str  # ACCURACY or ROUGE_L
    instruction: str
    train: list[Example]
    test: list[Example]
    labels: list[str] | None = None
    template: str = DEFAULT_TEMPLATE
    source: str = ""  # where the task was read from, for messages and reports
    extra: dict = field(default_factory=dict)

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
