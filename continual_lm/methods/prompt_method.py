"""PromptMethod: the shared base of the soft-prompt methods (L2P, Progressive Prompts, LFPT5, EPI, SAPT-Prompt and
the ``--single-pet prompt`` / ``--mtl-pet prompt`` references).

They all train soft prompts (``models/prompt_bank.py``) in front of the input embeddings of a frozen backbone and
differ only in which prompt each input gets. A subclass names its prompt module and says which prompt a batch gets:

    prompt_module                 the name of its prompts on the model (their checkpoint names start with it)
    build_prompts() -> module     the module holding the prompts; by default ``self.bank``, a PromptBank of
                                  ``options.prompt_length``-token prompts starting with ``initial_prompts`` of them
    test_prompt(model, batch)     the prompt of an evaluation batch ([L, H] for all rows or [B, L, H]), from its
                                  input_ids/attention_mask only (no task id); None: no prompt yet, the backbone alone
    train_prompt(model, batch)    the prompt of a training batch (default: ``test_prompt``)

and the base does the rest, once for all of them:

    setup       freeze the backbone, read whether it is seq2seq and its input-embedding layer from the model itself
                (``frozen_backbone``: nothing from a loaded backbone, so ``continual-lm plan`` sets a method up on the
                meta device), then register ``build_prompts()`` on the model as ``prompt_module``, so the prompts
                are checkpointed with the model's trainable parameters
    forward     ``prompt_forward`` with ``train_prompt`` (the answer positions' logits; ``models/lm_forward.py``)
    generate    greedy ``prompt_generate`` with ``test_prompt``

Shared helpers: ``input_mask(batch, seq2seq)`` (the input positions an input-level query may read, the same in
training and at test time; L2P and SAPT), ``pseudo_sample_count`` (LFPT5 and SAPT),
``PromptBank.add_prompt(freeze_earlier=True)`` (freeze the earlier
prompts, add one: ProgPrompt, EPI, SAPT-Prompt) and ``models.lm_forward.evaluating`` (evaluation mode inside a hook,
the previous mode restored). ``pet_kind = "prompt"`` and the protocol are declared by each method itself.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..data.collate import IGNORE_INDEX
from ..models.lm_forward import input_embeddings, is_seq2seq_model
from ..models.prompt_bank import PromptBank, prompt_forward, prompt_generate
from .base import Method


def frozen_backbone(model: nn.Module) -> tuple[bool, nn.Module]:
    """Freeze every weight of the backbone; return (whether it is seq2seq, its input-embedding layer)."""
    model.requires_grad_(False)
    return is_seq2seq_model(model), input_embeddings(model)


def pseudo_sample_count(options, task) -> int:
    """How many pseudo samples of a task the methods that generate them keep (LFPT5, SAPT): ``options.pseudo_count``
    if given, else ``options.pseudo_fraction`` of ``task``'s training size, at least 1."""
    if options.pseudo_count is not None:
        return options.pseudo_count
    return max(1, round(options.pseudo_fraction * len(task.train)))


def input_mask(batch: dict[str, torch.Tensor], seq2seq: bool) -> torch.Tensor:
    """The positions of the input proper [B, S] (bool): not padding and, in a causal training batch, not the answer
    (labels other than -100), so that a query sees in training what it sees at test time."""
    mask = batch["attention_mask"].bool()
    if "labels" in batch and not seq2seq:
        mask = mask & (batch["labels"] == IGNORE_INDEX)
    return mask


class PromptMethod(Method):
    soft_prompt_tuning = True  # the soft-prompt default learning rate (methods/base.py: default_lr)
    supports_corpus_tasks = False  # the knowledge is in prompts outside the model body an end task fine-tunes
    prompt_module: ClassVar[str] = ""
    initial_prompts: ClassVar[int] = 0  # prompts the default bank (build_prompts) starts with

    is_seq2seq: bool
    embedding: nn.Module

    def setup(self, model, backbone):
        self.is_seq2seq, self.embedding = frozen_backbone(model)
        self.attach_prompts(model)

    def attach_prompts(self, model: nn.Module) -> None:
        model.add_module(self.prompt_module, self.build_prompts())

    def build_prompts(self) -> nn.Module:
        """By default ``self.bank``: a PromptBank of ``options.prompt_length``-token prompts that starts with
        ``initial_prompts`` of them (methods that add one per task add them in ``before_task``)."""
        self.bank = PromptBank(self.embedding, self.options.prompt_length, prompts=self.initial_prompts)
        return self.bank

    def test_prompt(self, model, batch) -> torch.Tensor | None:
        raise NotImplementedError

    def train_prompt(self, model, batch) -> torch.Tensor:
        return self.test_prompt(model, batch)

    def forward(self, model, batch):
        return prompt_forward(model, batch, self.train_prompt(model, batch))

    def generate(self, model, batch, max_new_tokens, **generate_kwargs):
        prompt = self.test_prompt(model, batch)
        if prompt is None:  # e.g. before the first task (zero-shot evaluation of unseen tasks)
            return super().generate(model, batch, max_new_tokens, **generate_kwargs)
        return prompt_generate(model, batch["input_ids"], batch["attention_mask"], prompt,
                               max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, **generate_kwargs)
