"""LFPT5: one soft prompt, continually trained as task solver and as generator of pseudo samples of earlier tasks
(Qin & Joty, ICLR 2022, "LFPT5: A Unified Framework for Lifelong Few-shot Language Learning Based on Prompt Tuning
of T5"; reference code qcwthu/Lifelong-Fewshot-Language-Learning).

Prompt   one PromptBank prompt (``--lfpt5-prompt-length`` tokens, from sampled vocabulary embeddings) prepended to the
         input embeddings; the backbone is frozen. The same prompt is trained through the whole stream.
LM       every training step adds ``lm_weight * L_LM`` (reference: 0.25): the prompt also learns to write an example
         of task j after the task's marker ``__<task name>__``: causal "marker input __ans__ output<eos>" (loss on the
         part after the marker), seq2seq encoder "marker" -> decoder "input __ans__ output". The LM batches cycle over
         the phase's training examples (own + pseudo) in a seeded order.
Replay   after task t (if a task follows) the prompt samples pseudo samples of every task j <= t from its marker
         (top-k sampling), parsed at "__ans__"; classification outputs must be one of the task's labels. Samples
         whose answer is missing or invalid are relabelled by the solver (greedy answer of the prompt on the pseudo
         input) or, with ``--no-lfpt5-relabel-invalid``, dropped as in the reference. Task t+1 trains on its own data
         plus ``max(1, round(pseudo_fraction * |train_{t+1}|))`` pseudo samples per earlier task (JSON method state).
KL       on the pseudo rows of a batch, ``kl_weight * KL(p_prev || p_cur)`` over the answer tokens, p_prev from the
         prompt as it was when the task started (label consistency with the previous model).
See docs/methods/lfpt5.md for the mapping to the paper and the deviations.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.collate import IGNORE_INDEX, Encoded
from ..data.tasks import Example, Task
from ..models.lm_forward import evaluating
from ..models.prompt_bank import prompt_forward, prompt_generate
from .option_checks import check_fields, none_means
from .base import TrainExample
from .prompt_method import PromptMethod, pseudo_sample_count

ANSWER_MARKER = "__ans__"


def generator_marker(task: Task) -> str:
    """The input that asks the prompt for an example of ``task`` (the reference's per-task generation token)."""
    return f"__{task.name}__"


@dataclass
class LFPT5Options:
    prompt_length: int = 10  # soft-prompt tokens (the reference uses 300 on T5-large)
    lm_weight: float = 0.25  # lambda of the generation (LM) loss; reference --lm_lambda 0.25
    kl_weight: float = 0.01  # weight of the KL on pseudo samples; reference Classification.sh --kd_lamda 0.01
    pseudo_fraction: float = 0.125  # pseudo samples per earlier task / training size of the new task (ref.: 2 of 16)
    pseudo_count: int | None = none_means("pseudo_fraction of the new task's training size")  # fixed, per task
    generator_max_tokens: int = 64  # longest generated "input __ans__ output" (tokens)
    top_k: int = 64  # top-k sampling of pseudo samples (reference: 64)
    relabel_invalid: bool = True  # answer missing/not a label: relabel by the solver (True) or drop (reference)

    def validate(self) -> None:
        check_fields("lfpt5", self, prompt_length="an integer >= 1", lm_weight="a number >= 0", kl_weight="a number >= 0",
                     pseudo_fraction="a number in [0, 1]", pseudo_count="an integer >= 0 or None",
                     generator_max_tokens="an integer >= 4", top_k="an integer >= 0")  # top_k 0: no top-k cut


class LFPT5(PromptMethod):
    name = "lfpt5"
    description = "one soft prompt trained to solve tasks and to generate pseudo samples of earlier tasks (+KL)"
    Options = LFPT5Options
    uses_task_id_at_train = True  # per-task generation markers and a KL teacher per task
    uses_task_id_at_test = False
    uses_replay = False  # no real example of an earlier task is kept
    uses_pseudo_samples = True
    pet_kind = "prompt"
    differs_from_paper = ("defaults: a 10-token prompt and 12.5 % pseudo samples per earlier task; SAPT compared "
                          "against 300 tokens and 2 % (set by --preset paper)")
    initial_prompts = 1  # the one prompt, trained through the whole stream
    prompt_module = "lfpt5_prompt"

    # ---- structure ---------------------------------------------------------------------------------------------
    def setup(self, model, backbone):
        super().setup(model, backbone)
        self.pseudo: dict[int, list[dict[str, str]]] = {}  # task -> [{"input", "output"}], regenerated per task
        self.teacher: torch.Tensor | None = None  # the prompt when the current task started (KL target)
        self.current_task = 0
        self._lm_examples: list[TrainExample] = []
        self._lm_step = 0

    @property
    def prompt(self) -> torch.nn.Parameter:
        return self.bank.prompts[0]

    def test_prompt(self, model, batch):
        return self.prompt  # the one prompt, for every input

    # ---- training ----------------------------------------------------------------------------------------------
    def train_examples(self, task_index, examples):
        """Own data + the pseudo samples of every earlier task. Called by the loop right before training (after
        any checkpoint was loaded), so the KL teacher copied here is the prompt after task ``task_index - 1``."""
        pseudo = [TrainExample(j, Example(p["input"], p["output"]))
                  for j in sorted(self.pseudo) if j < task_index for p in self.pseudo[j]]
        mixed = examples + pseudo
        self.current_task = task_index
        self.teacher = self.prompt.detach().clone() if pseudo else None
        order = torch.randperm(len(mixed), generator=torch.Generator().manual_seed(self.config.seed * 7919 + task_index))
        self._lm_examples, self._lm_step = [mixed[k] for k in order.tolist()], 0
        return mixed

    def forward(self, model, batch):
        return prompt_forward(model, batch, self.prompt, all_logits=True)  # kl_loss reads the answer positions

    def extra_loss(self, model, batch, outputs):
        terms = []
        if self.options.lm_weight > 0 and self._lm_examples:
            terms.append(self.options.lm_weight * prompt_forward(model, self._next_lm_batch(), self.prompt).loss)
        if self.teacher is not None and self.options.kl_weight > 0:
            rows = batch["task_ids"] < self.current_task  # the pseudo samples of earlier tasks
            if rows.any():
                terms.append(self.options.kl_weight * self.kl_loss(model, batch, outputs.logits, rows))
        return sum(terms) if terms else None

    def _next_lm_batch(self) -> dict[str, torch.Tensor]:
        size, n = self.config.batch_size, len(self._lm_examples)
        chosen = [self._lm_examples[(self._lm_step * size + k) % n] for k in range(min(size, n))]
        self._lm_step += 1
        batch = self.context.collator.train_batch([self.lm_encoded(e.task_index, e.example) for e in chosen])
        return {k: v.to(self.context.device) for k, v in batch.items()}

    def lm_encoded(self, task_index: int, example: Example) -> Encoded:
        """The generation-format example: marker -> "input __ans__ output<eos>" (the input part truncated first)."""
        tokenizer = self.context.collator.tokenizer
        marker = tokenizer(generator_marker(self.tasks[task_index]), add_special_tokens=True)["input_ids"]
        answer = tokenizer(f" {ANSWER_MARKER} {example.target.strip()}", add_special_tokens=False)["input_ids"]
        answer = answer[:self.options.generator_max_tokens - 2]
        given = tokenizer(example.input.strip() if self.is_seq2seq else " " + example.input.strip(),
                          add_special_tokens=False)["input_ids"]
        body = given[:self.options.generator_max_tokens - 1 - len(answer)] + answer + [tokenizer.eos_token_id]
        if self.is_seq2seq:
            return Encoded(marker, body, task_index)
        return Encoded(marker + body, [IGNORE_INDEX] * len(marker) + body, task_index)

    def kl_loss(self, model, batch, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Mean over answer tokens of KL(previous prompt's next-token distribution || current one), on ``rows``."""
        sub = {k: batch[k][rows] for k in ("input_ids", "attention_mask", "labels")}
        with torch.no_grad():
            previous = prompt_forward(model, sub, self.teacher, all_logits=True).logits
        positions = self.answer_positions(sub["labels"])
        current = logits[rows][positions].float()
        previous = previous[positions].float()
        return F.kl_div(current.log_softmax(-1), previous.log_softmax(-1), log_target=True,
                        reduction="sum") / max(1, current.shape[0])

    def answer_positions(self, labels: torch.Tensor) -> torch.Tensor:
        """Mask over the logits (prompt included for causal models) of the positions that predict answer tokens."""
        if self.is_seq2seq:
            return labels != IGNORE_INDEX  # decoder logits are aligned with the labels
        extended = F.pad(labels, (self.options.prompt_length, 0), value=IGNORE_INDEX)
        return F.pad(extended[:, 1:] != IGNORE_INDEX, (0, 1), value=False)  # logits[p] predicts token p + 1

    # ---- pseudo samples ----------------------------------------------------------------------------------------
    def pseudo_count(self, task_index: int) -> int:
        """Pseudo samples per earlier task while training ``task_index``."""
        return pseudo_sample_count(self.options, self.tasks[task_index])

    def after_task(self, model, task_index, task, examples):
        self.teacher = None
        if task_index + 1 >= len(self.tasks):
            return  # nothing would use them
        count = self.pseudo_count(task_index + 1)
        with evaluating(model):
            self.pseudo = {j: self.generate_pseudo_samples(model, j, count) for j in range(task_index + 1)}

    @torch.no_grad()
    def sample_generations(self, model, task_index: int, count: int) -> list[str]:
        """``count`` texts sampled by the prompt after task ``task_index``'s marker."""
        tokenizer, device = self.context.collator.tokenizer, self.context.device
        marker = tokenizer(generator_marker(self.tasks[task_index]), add_special_tokens=True)["input_ids"]
        texts = []
        for start in range(0, count, self.config.eval_batch_size):
            n = min(self.config.eval_batch_size, count - start)
            ids = torch.tensor([marker] * n, device=device)
            output = prompt_generate(model, ids, torch.ones_like(ids), self.prompt, do_sample=True,
                                     top_k=self.options.top_k, top_p=1.0, min_new_tokens=2,
                                     max_new_tokens=self.options.generator_max_tokens)
            if not self.is_seq2seq:
                output = output[:, ids.shape[1]:]
            texts += tokenizer.batch_decode(output, skip_special_tokens=True)
        return texts

    def generate_pseudo_samples(self, model, task_index: int, count: int) -> list[dict[str, str]]:
        """Up to ``count`` pseudo samples {"input", "output"} of a task (twice as many are sampled, the first
        ``count`` usable ones are kept, in order)."""
        if count == 0:
            return []
        task = self.tasks[task_index]
        kept = []
        for text in self.sample_generations(model, task_index, 2 * count):
            given, separator, answer = text.partition(ANSWER_MARKER)
            given, answer = given.strip(), answer.strip()
            valid = bool(separator and answer and (not task.labels or answer in task.labels))
            if given and (valid or self.options.relabel_invalid):
                kept.append({"input": given, "output": answer if valid else None})
            if len(kept) == count:
                break
        unlabelled = [k for k, sample in enumerate(kept) if sample["output"] is None]
        if unlabelled:
            answers = self.greedy_answers(model, task_index, [kept[k]["input"] for k in unlabelled])
            for k, answer in zip(unlabelled, answers):
                kept[k]["output"] = answer
        return [sample for sample in kept if sample["output"]]

    # ---- state -------------------------------------------------------------------------------------------------
    def extra_state(self):
        return {}, {"pseudo": {str(j): samples for j, samples in self.pseudo.items()}}

    def load_extra_state(self, tensors, meta):
        self.pseudo = {int(j): samples for j, samples in meta.get("pseudo", {}).items()}
