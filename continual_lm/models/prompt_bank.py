"""PromptBank: soft prompts (prompt tuning) prepended to the input embeddings of any causal or seq2seq model.

Each prompt is a [length, hidden] matrix initialised from randomly sampled rows of the backbone's vocabulary
embedding (Lester et al., 2021). Prompts are stacked in a ParameterList so methods can grow the bank per task and
freeze earlier prompts (``add_prompt(freeze_earlier=True)``: ProgPrompt, EPI, SAPT-Prompt). A method builds, per
example, the prompt it wants ([B, L, H] or one [L, H] for the batch):

    weighted(weights [B, P])        attention-weighted sum of all prompts (SAPT-Prompt)
    gather(indices [B, k])          per-example selection, concatenated ([B, k*L, H]; L2P top-k, EPI's chosen task)

and ``prepend_prompt`` / ``prompt_forward`` / ``prompt_generate`` put it in front of the input embeddings: the
attention mask gets ones for the prompt, causal labels get -100 for it; for seq2seq models the prompt goes in front
of the *encoder* input and the labels (decoder side) are unchanged. The bank does not own the embedding layer
(the backbone does), so its only parameters are the prompts.
"""
from __future__ import annotations

import torch
from torch import nn

from ..data.collate import IGNORE_INDEX
from .lm_forward import input_embeddings, is_seq2seq_model, lm_forward


class PromptBank(nn.Module):
    def __init__(self, embedding: nn.Embedding, length: int = 10, prompts: int = 0):
        """A bank of ``length``-token prompts over ``embedding``, starting with ``prompts`` of them."""
        super().__init__()
        if length <= 0:
            raise ValueError(f"prompt length must be positive, got {length}")
        self.length = length
        self.hidden_size = embedding.weight.shape[1]
        self._embedding = [embedding]  # a plain reference: not a submodule, so no duplicate parameters
        self.prompts = nn.ParameterList()  # each [length, hidden]
        for _ in range(prompts):
            self.add_prompt()

    @property
    def num_prompts(self) -> int:
        return len(self.prompts)

    def add_prompt(self, freeze_earlier: bool = False) -> int:
        """Append a prompt initialised from ``length`` sampled vocabulary embeddings; return its index. With
        ``freeze_earlier`` every existing prompt stops training first (a new prompt per task)."""
        if freeze_earlier:
            for prompt in self.prompts:
                prompt.requires_grad_(False)
        weight = self._embedding[0].weight
        rows = torch.randint(0, weight.shape[0], (self.length,), device=weight.device)
        self.prompts.append(nn.Parameter(weight.detach()[rows].clone()))
        return self.num_prompts - 1

    def remove_last(self) -> None:
        """Drop the newest prompt (a temporary one, e.g. a generator prompt)."""
        self.prompts = nn.ParameterList(list(self.prompts)[:-1])

    def stacked(self) -> torch.Tensor:
        return torch.stack(list(self.prompts))  # [P, L, H]

    def weighted(self, weights: torch.Tensor) -> torch.Tensor:
        """sum_i weights[b, i] * prompt_i -> [B, L, H] for weights [B, P]."""
        stacked = self.stacked()
        return torch.einsum("bp,plh->blh", weights.to(stacked.dtype), stacked)

    def gather(self, indices: torch.Tensor) -> torch.Tensor:
        """Per-example prompts: indices [B] or [B, k] -> [B, k*L, H]."""
        if indices.dim() == 1:
            indices = indices[:, None]
        picked = self.stacked()[indices]  # [B, k, L, H]
        return picked.flatten(1, 2)


def prepend_prompt(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt: torch.Tensor,
                   labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Model keyword arguments with ``prompt`` ([L, H] or [B, L, H]) in front of the embedded ``input_ids``."""
    embeds = input_embeddings(model)(input_ids)
    batch = input_ids.shape[0]
    if prompt.dim() == 2:
        prompt = prompt.unsqueeze(0).expand(batch, -1, -1)
    length = prompt.shape[1]
    inputs = {
        "inputs_embeds": torch.cat([prompt.to(embeds.dtype), embeds], dim=1),
        "attention_mask": torch.cat([attention_mask.new_ones(batch, length), attention_mask], dim=1),
    }
    if labels is not None:
        if not is_seq2seq_model(model):
            labels = torch.cat([labels.new_full((batch, length), IGNORE_INDEX), labels], dim=1)
        inputs["labels"] = labels
    return inputs


def prompt_forward(model: nn.Module, batch: dict[str, torch.Tensor], prompt: torch.Tensor, all_logits: bool = False):
    """The training forward of a batch (input_ids, attention_mask, labels) with the prompt prepended (``lm_forward``:
    logits of the answer positions unless ``all_logits``)."""
    inputs = prepend_prompt(model, batch["input_ids"], batch["attention_mask"], prompt, batch["labels"])
    return lm_forward(model, inputs.pop("labels"), all_logits=all_logits, **inputs)


def prompt_generate(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt: torch.Tensor,
                    **generate_kwargs) -> torch.Tensor:
    """``model.generate`` with the prompt prepended, returning what ``generate(input_ids=...)`` would: for causal
    models the input ids followed by the new tokens (generate on ``inputs_embeds`` alone returns only the new
    tokens), for seq2seq models the decoder output."""
    inputs = prepend_prompt(model, input_ids, attention_mask, prompt)
    output = model.generate(**inputs, **{"synced_gpus": False, **generate_kwargs})
    if is_seq2seq_model(model):
        return output
    return torch.cat([input_ids, output], dim=1)
