"""Progressive Prompts (Razdaibiedina et al., ICLR 2023, arXiv:2301.12314), on a causal or seq2seq LM.

Task t gets a new soft prompt P_t (``prompt_length`` tokens, initialised from sampled vocabulary embeddings); the
prompts of earlier tasks are frozen, the backbone is frozen. Training and testing use the whole progression,
newest prompt first as in the reference code (``torch.concat([prompt, previous_prompts, inputs_embeds])``):

    input embeddings = [P_t; P_{t-1}; ...; P_1; x]

so after T tasks every input carries T * prompt_length prompt tokens, and no task id is needed at test time.

``--progprompt-reparam mlp``: the paper's residual reparameterisation P'_t = P_t + MLP_t(P_t), MLP_t =
Linear(H, bottleneck) -> ReLU -> Linear(bottleneck, H) (the reference ``ResMLP`` 'MLP1'), one per task, trained
with P_t and frozen with it. Off by default, as in both reference scripts (``--prefix_MLP None``).
See docs/methods/progprompt.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..models.prompt_bank import PromptBank, prompt_forward, prompt_generate
from .option_checks import check_choice, check_fields
from .base import Method

REPARAM_MODES = ("none", "mlp")


@dataclass
class ProgPromptOptions:
    prompt_length: int = 10  # tokens per task prompt (reference scripts: --prefix_len 10)
    reparam: str = "none"  # none | mlp: residual MLP reparameterisation of each task's prompt
    mlp_bottleneck: int = 800  # hidden size of the reparameterisation MLP (reference default)

    def validate(self) -> None:
        check_choice("progprompt", self, "reparam", REPARAM_MODES)
        check_fields("progprompt", self, prompt_length="an integer >= 1", mlp_bottleneck="an integer >= 1")


class ResidualMLP(nn.Module):
    """P -> P + W2 ReLU(W1 P): the paper's residual prompt reparameterisation."""

    def __init__(self, hidden_size: int, bottleneck: int):
        super().__init__()
        self.module = nn.Sequential(nn.Linear(hidden_size, bottleneck), nn.ReLU(), nn.Linear(bottleneck, hidden_size))

    def forward(self, prompt: torch.Tensor) -> torch.Tensor:
        return prompt + self.module(prompt)


class ProgressivePrompts(nn.Module):
    """The per-task prompts (a PromptBank) and, with reparameterisation, one residual MLP per prompt."""

    def __init__(self, embedding: nn.Embedding, length: int, bottleneck: int | None):
        super().__init__()
        self.bank = PromptBank(embedding, length)
        self.mlps = nn.ModuleList()
        self.bottleneck = bottleneck

    @property
    def num_prompts(self) -> int:
        return self.bank.num_prompts

    def add_task_prompt(self) -> None:
        """Freeze every existing prompt (and MLP), then add a trainable one for the new task."""
        for p in self.parameters():
            p.requires_grad_(False)
        self.bank.add_prompt()
        if self.bottleneck is not None:
            weight = self.bank.prompts[-1]
            self.mlps.append(ResidualMLP(self.bank.hidden_size, self.bottleneck).to(weight.device, weight.dtype))

    def prompt(self, index: int) -> torch.Tensor:
        raw = self.bank.prompts[index]
        return self.mlps[index](raw) if self.bottleneck is not None else raw

    def progression(self) -> torch.Tensor:
        """[P_t; ...; P_1] (newest first): [t * length, H]."""
        return torch.cat([self.prompt(i) for i in reversed(range(self.num_prompts))], dim=0)


class ProgPrompt(Method):
    name = "progprompt"
    soft_prompt_tuning = True
    description = "Progressive Prompts: a new soft prompt per task after the frozen earlier ones (no task id)"
    Options = ProgPromptOptions
    uses_task_id_at_test = False
    uses_task_id_at_train = True  # a new prompt at each task boundary
    pet_kind = "prompt"
    supports_corpus_tasks = False  # the knowledge is in prompts outside the model body an end task fine-tunes

    def setup(self, model, backbone):
        model.requires_grad_(False)
        bottleneck = self.options.mlp_bottleneck if self.options.reparam == "mlp" else None
        self.prompts = ProgressivePrompts(model.get_input_embeddings(), self.options.prompt_length, bottleneck)
        model.add_module("progprompt", self.prompts)  # checkpointed with the model's parameters

    def before_task(self, model, task_index, task):
        self.prompts.add_task_prompt()

    def forward(self, model, batch):
        return prompt_forward(model, batch, self.prompts.progression())

    def generate(self, model, batch, max_new_tokens, **generate_kwargs):
        # Every input gets the full progression: no task id is read.
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, synced_gpus=False,
                      **generate_kwargs)
        if self.prompts.num_prompts == 0:  # before the first task (zero-shot evaluation of unseen tasks)
            return model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        return prompt_generate(model, input_ids, attention_mask, self.prompts.progression(), **kwargs)
