"""SAPT: Shared Attentive learning & selection with attentive reflection (Zhao et al., ACL 2024, arXiv:2401.08295).

SALS  one PET block per task (a LoRA in every target LoRABank: ``sapt-lora``; a soft prompt: ``sapt-prompt``)
      plus a key k_i. For an input x with token embeddings E (the backbone's embedding layer, padding excluded):
          q = LayerNorm(W_up SiLU(W_down maxpool(E)))         a = softmax_i(q . k_i / tau),  tau = sqrt(d_model)
      and the block used for x is sum_i a_i block_i (LoRA: the a-weighted low-rank updates; prompt: the a-weighted
      prompts). Training task t trains block t, key t and the query projection; earlier blocks and keys are frozen.
      The same computation selects blocks at test time: no task id.
ARM   after task t: a temporary generator block (own LoRA / prompt) learns to write task t's inputs after the
      "[Gen]" marker and samples ``pseudo_count`` pseudo inputs (JSON method state); the mean attention of a few
      held-out training inputs of task t is stored. While training later tasks, pseudo inputs of every earlier task j
      add eta * KL(stored mean_j, zero-padded || current attention) to the loss (``--sapt-*-arm kl``), or are
      replayed as ordinary training data with answers from the model of their task (``replay``), or nothing
      (``none``). See docs/methods/sapt.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.collate import IGNORE_INDEX, Encoded
from ..data.tasks import Example
from ..eval.report import plot_fraction_heatmap
from ..io_utils import atomic_write_json
from ..models.lm_forward import batch_forward
from ..models.prompt_bank import PromptBank, prompt_forward, prompt_generate
from .option_checks import check_choice, check_fields
from .base import LoRAMethod, Method, TrainExample

ARM_MODES = ("kl", "none", "replay")
GEN_MARKER = "[Gen]"
HEATMAP_JSON = "sapt_attention.json"


@dataclass
class SAPTOptions:
    arm: str = "kl"  # kl: the paper's ARM; none: no ARM; replay: pseudo samples replayed as training data
    eta: float = 1.0  # weight of the KL term
    query_hidden: int = 100  # hidden size of the query projection
    temperature: float | None = None  # attention temperature; None = sqrt(d_model) (the reference code's default)
    pseudo_fraction: float = 0.02  # pseudo inputs per task as a fraction of its training size (at least 1)
    pseudo_count: int | None = None  # a fixed number of pseudo inputs per task instead of the fraction
    attention_holdout: int = 16  # training inputs per task held out (not trained on) for the stored mean attention
    generator_epochs: int | None = None  # epochs of the generator block; None = the run's --epochs
    generator_max_tokens: int = 64  # longest generated pseudo input (tokens)

    def validate(self) -> None:
        check_choice("sapt-*", self, "arm", ARM_MODES)
        check_fields("sapt-*", self, eta="a number >= 0", query_hidden="an integer >= 1",
                     temperature="a number > 0 or None", pseudo_fraction="a number in [0, 1]",
                     pseudo_count="an integer >= 1 or None", attention_holdout="an integer >= 0",
                     generator_epochs="an integer >= 1 or None", generator_max_tokens="an integer >= 1")


@dataclass
class SAPTPromptOptions(SAPTOptions):
    prompt_length: int = 10  # soft-prompt tokens per task

    def validate(self) -> None:
        super().validate()
        check_fields("sapt-prompt", self, prompt_length="an integer >= 1")


class SharedAttention(nn.Module):
    """The query projection and the per-task keys; returns instance-level attention over the blocks."""

    def __init__(self, hidden_size: int, query_hidden: int, temperature: float):
        super().__init__()
        self.down = nn.Linear(hidden_size, query_hidden, bias=False)
        self.up = nn.Linear(query_hidden, hidden_size, bias=False)
        self.norm = nn.LayerNorm(hidden_size)
        self.keys = nn.ParameterList()  # one [hidden] key per task
        self.temperature = temperature

    def add_key(self) -> None:
        """A new key, U(-1, 1) as in the reference code; earlier keys are frozen."""
        for key in self.keys:
            key.requires_grad_(False)
        weight = self.up.weight
        self.keys.append(nn.Parameter(torch.empty(weight.shape[0], device=weight.device).uniform_(-1, 1)))

    def query_parameters(self) -> list[nn.Parameter]:
        return [*self.down.parameters(), *self.up.parameters(), *self.norm.parameters()]

    def log_weights(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log attention [B, T] from token embeddings [B, S, H] and the mask of the tokens to pool [B, S]."""
        pooled = embeds.float().masked_fill(~mask.bool().unsqueeze(-1), float("-inf")).amax(dim=1)
        query = self.norm(self.up(F.silu(self.down(pooled))))
        keys = torch.stack(list(self.keys))
        return torch.log_softmax(query @ keys.T / self.temperature, dim=-1)

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.log_weights(embeds, mask).exp()


class InstanceWeights(nn.Module):
    """The mixer of every LoRABank: the instance-level weights [B, T] the method sets once per forward."""

    def __init__(self):
        super().__init__()
        self.weights: torch.Tensor | None = None

    def forward(self, bank, x, xa):
        if self.weights is None or self.weights.shape[-1] != xa.shape[-2]:
            raise RuntimeError("SAPT: the LoRA weights were not set for this forward")
        return self.weights.unsqueeze(1)  # [B, 1, T]: the same weights for every position


def kl_to_stored(stored: torch.Tensor, log_attention: torch.Tensor) -> torch.Tensor:
    """Batch-mean KL(stored || attention): stored [B, T] (zeros allowed), log_attention [B, T]."""
    terms = torch.where(stored > 0, stored * (stored.clamp_min(1e-30).log() - log_attention), 0.0)
    return terms.sum(-1).mean()


class SAPT(Method):
    """Shared implementation; the subclasses supply the PET blocks (``*_block`` and ``run_blocks``/``generate_with``)."""

    Options = SAPTOptions
    uses_task_id_at_test = False
    supports_corpus_tasks = False  # instruction-conditioned selection and pseudo-sample replay need labelled tasks

    # ---- structure ---------------------------------------------------------------------------------------------
    def setup(self, model, backbone):
        self.is_seq2seq = backbone.is_seq2seq
        self.embedding = model.get_input_embeddings()
        hidden = self.embedding.weight.shape[1]
        temperature = self.options.temperature or math.sqrt(hidden)
        model.requires_grad_(False)
        self.attention = SharedAttention(hidden, self.options.query_hidden, temperature).to(self.embedding.weight.device)
        model.add_module("sapt_attention", self.attention)  # its parameters are checkpointed with the model's
        self.setup_blocks(model, backbone)
        self.pseudo: dict[int, list[dict[str, str]]] = {}  # task -> [{"input", "output"}]
        self.mean_attention: dict[int, list[float]] = {}  # task -> stored mean attention (ARM)
        self.train_attention: dict[int, list[float]] = {}  # task -> mean attention on its training inputs (heatmap)
        self._kl_batches: list | None = None
        self._kl_step = 0

    def before_task(self, model, task_index, task):
        self.attention.add_key()
        for p in self.attention.query_parameters():
            p.requires_grad_(True)
        self.add_block()
        self._kl_batches, self._kl_step = None, 0

    # ---- the SALS path -----------------------------------------------------------------------------------------
    def attention_weights(self, input_ids: torch.Tensor, mask: torch.Tensor, log: bool = False) -> torch.Tensor:
        embeds = self.embedding(input_ids)
        return self.attention.log_weights(embeds, mask) if log else self.attention(embeds, mask)

    def forward(self, model, batch):
        mask = batch["attention_mask"].bool()
        if not self.is_seq2seq:
            mask = mask & (batch["labels"] == IGNORE_INDEX)  # the query sees the input only, as at test time
        return self.run_blocks(model, batch, self.attention_weights(batch["input_ids"], mask))

    def generate(self, model, batch, max_new_tokens):
        # Only input_ids/attention_mask are read: the blocks are selected by the attention, never by a task id.
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        weights = self.attention_weights(input_ids, attention_mask.bool())
        return self.generate_with(model, input_ids, attention_mask, weights, max_new_tokens=max_new_tokens,
                                  do_sample=False, num_beams=1)

    # ---- ARM ---------------------------------------------------------------------------------------------------
    def holdout_count(self, task_index: int) -> int:
        """Held-out training inputs for the stored attention: attention_holdout, at most an eighth of the task."""
        return min(self.options.attention_holdout, len(self.tasks[task_index].train) // 8)

    def train_examples(self, task_index, examples):
        k = self.holdout_count(task_index)
        held = {id(e) for e in self.tasks[task_index].train[len(self.tasks[task_index].train) - k:]} if k else set()
        kept = [e for e in examples if not (e.task_index == task_index and id(e.example) in held)]
        if self.options.arm == "replay":
            for j in sorted(self.pseudo):
                kept += [TrainExample(j, Example(p["input"], p["output"])) for p in self.pseudo[j] if j < task_index]
        return kept

    def extra_loss(self, model, batch, outputs):
        if self.options.arm != "kl" or not any(j in self.pseudo for j in range(len(self.attention.keys) - 1)):
            return None
        if self._kl_batches is None:
            self._kl_batches = self._pseudo_batches()
        ids, mask, stored = self._kl_batches[self._kl_step % len(self._kl_batches)]
        self._kl_step += 1
        return self.options.eta * self.kl_loss(ids, mask, stored)

    def kl_loss(self, input_ids, mask, stored_mean: torch.Tensor) -> torch.Tensor:
        """KL(stored mean zero-padded to the current blocks || current attention) on inputs of one earlier task."""
        log_attention = self.attention_weights(input_ids, mask.bool(), log=True)
        target = F.pad(stored_mean.to(log_attention.device), (0, log_attention.shape[-1] - stored_mean.shape[-1]))
        return kl_to_stored(target.expand_as(log_attention), log_attention)

    def _pseudo_batches(self):
        batches = []
        for j in sorted(self.pseudo):
            if j >= len(self.attention.keys) - 1 or not self.pseudo[j]:
                continue
            stored = torch.tensor(self.mean_attention[j])
            for batch in self.context.prompt_batches(j, [p["input"] for p in self.pseudo[j]], self.config.batch_size):
                batches.append((batch["input_ids"], batch["attention_mask"], stored))
        return batches

    @torch.no_grad()
    def mean_attention_on(self, task_index: int, texts: list[str]) -> list[float]:
        rows = [self.attention_weights(b["input_ids"], b["attention_mask"].bool())
                for b in self.context.prompt_batches(task_index, texts)]
        return torch.cat(rows).mean(0).tolist()

    def after_task(self, model, task_index, task, examples):
        was_training = model.training
        model.eval()
        train = [e.input for e in task.train]
        k = self.holdout_count(task_index)
        held, used = (train[len(train) - k:], train[:len(train) - k]) if k else (train, train)
        self.mean_attention[task_index] = self.mean_attention_on(task_index, held)
        self.train_attention[task_index] = self.mean_attention_on(task_index, used)
        if self.options.arm != "none" and task_index + 1 < len(self.tasks):
            inputs = self.generate_pseudo_inputs(model, task_index, train)
            replayed = self.options.arm == "replay"
            outputs = self.greedy_answers(model, task_index, inputs) if replayed else [""] * len(inputs)
            self.pseudo[task_index] = [{"input": i, "output": o} for i, o in zip(inputs, outputs)]
        model.train(was_training)

    def pseudo_count(self, task_index: int) -> int:
        if self.options.pseudo_count is not None:
            return self.options.pseudo_count
        return max(1, round(self.options.pseudo_fraction * len(self.tasks[task_index].train)))

    def _generator_encoded(self, text: str) -> Encoded:
        tokenizer, limit = self.context.collator.tokenizer, self.options.generator_max_tokens
        marker = tokenizer(GEN_MARKER, add_special_tokens=True)["input_ids"]
        body = tokenizer(text if self.is_seq2seq else " " + text, add_special_tokens=False)["input_ids"][:limit - 1]
        body = body + [tokenizer.eos_token_id]
        if self.is_seq2seq:
            return Encoded(marker, body)
        return Encoded(marker + body, [IGNORE_INDEX] * len(marker) + body)

    def generate_pseudo_inputs(self, model, task_index: int, texts: list[str]) -> list[str]:
        """Train a temporary generator block on "[Gen]" -> input, sample pseudo inputs, remove the block."""
        collator, device = self.context.collator, self.context.device
        previous = {p: p.requires_grad for p in model.parameters()}
        model.requires_grad_(False)
        params = self.add_generator_block()
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(params, lr=self.config.lr, weight_decay=self.config.weight_decay)
        encoded = [self._generator_encoded(t) for t in texts]
        order = torch.Generator().manual_seed(self.config.seed * 31 + task_index)
        model.train()
        try:
            for _ in range(self.options.generator_epochs or self.config.epochs):
                perm = torch.randperm(len(encoded), generator=order).tolist()
                for start in range(0, len(perm), self.config.batch_size):
                    batch = collator.train_batch([encoded[i] for i in perm[start:start + self.config.batch_size]])
                    batch = {k: v.to(device) for k, v in batch.items()}
                    loss = self.run_blocks(model, batch, self._generator_weights(batch["input_ids"].shape[0])).loss
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            model.eval()
            marker = collator.tokenizer(GEN_MARKER, add_special_tokens=True)["input_ids"]
            count = self.pseudo_count(task_index)
            ids = torch.tensor([marker] * count, device=device)
            with torch.no_grad():
                output = self.generate_with(model, ids, torch.ones_like(ids), self._generator_weights(count),
                                            max_new_tokens=self.options.generator_max_tokens, min_new_tokens=2,
                                            do_sample=True, top_k=0, top_p=1.0)
            if not self.is_seq2seq:
                output = output[:, ids.shape[1]:]
            generated = [t.strip() for t in collator.tokenizer.batch_decode(output, skip_special_tokens=True)]
        finally:
            self.remove_generator_block()
            for p, flag in previous.items():
                p.requires_grad_(flag)
        return [t for t in generated if t]

    def _generator_weights(self, batch_size: int) -> torch.Tensor:
        """One-hot on the generator block (the last one) for every example."""
        weights = torch.zeros(batch_size, self.num_blocks(), device=self.context.device)
        weights[:, -1] = 1.0
        return weights

    # ---- insight: attention heatmaps (paper Figure 3) ----------------------------------------------------------
    def on_run_end(self, model):
        if self.context is None or self.context.run_dir is None:
            return
        T = len(self.attention.keys)
        was_training = model.training
        model.eval()
        test = [self.mean_attention_on(j, [e.input for e in self.tasks[j].test]) if self.tasks[j].test else [0.0] * T
                for j in range(T)]
        model.train(was_training)
        train = [self.train_attention.get(j, []) + [0.0] * (T - len(self.train_attention.get(j, []))) for j in range(T)]
        names = [t.name for t in self.tasks[:T]]
        path = self.context.run_dir
        atomic_write_json(path / HEATMAP_JSON, {"tasks": names, "train": train, "test": test})
        for label, matrix in (("train", train), ("test", test)):
            plot_fraction_heatmap(matrix, path / f"sapt_attention_{label}_heatmap.png", rows=names,
                                  columns=[f"block {i + 1}" for i in range(len(names))],
                                  xlabel="PET block (one per task, in stream order)", ylabel="inputs of task",
                                  title=f"SAPT shared attention ({label} time: mean over each task's {label} inputs)")

    # ---- state -------------------------------------------------------------------------------------------------
    def extra_state(self):
        def by_task(d):
            return {str(k): v for k, v in d.items()}

        return {}, {"pseudo": by_task(self.pseudo), "mean_attention": by_task(self.mean_attention),
                    "train_attention": by_task(self.train_attention)}

    def load_extra_state(self, tensors, meta):
        self.pseudo = {int(k): v for k, v in meta.get("pseudo", {}).items()}
        self.mean_attention = {int(k): v for k, v in meta.get("mean_attention", {}).items()}
        self.train_attention = {int(k): v for k, v in meta.get("train_attention", {}).items()}

    # ---- the PET blocks (subclasses) ---------------------------------------------------------------------------
    def setup_blocks(self, model, backbone) -> None:
        raise NotImplementedError

    def num_blocks(self) -> int:
        raise NotImplementedError

    def add_block(self) -> None:
        """A new trainable block for the new task; earlier blocks frozen."""
        raise NotImplementedError

    def add_generator_block(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def remove_generator_block(self) -> None:
        raise NotImplementedError

    def run_blocks(self, model, batch, weights):
        """The training forward of ``batch`` with the blocks combined by ``weights`` [B, num_blocks]."""
        raise NotImplementedError

    def generate_with(self, model, input_ids, attention_mask, weights, **generate_kwargs) -> torch.Tensor:
        raise NotImplementedError


class SAPTLoRA(SAPT, LoRAMethod):
    name = "sapt-lora"
    description = "SAPT with a LoRA per task, combined by an input-level shared attention (no task id)"

    def setup_blocks(self, model, backbone):
        LoRAMethod.setup(self, model, backbone)
        self.mixer = InstanceWeights()
        for bank in self.banks.values():
            bank.mixer = self.mixer

    def num_blocks(self):
        return next(iter(self.banks.values())).num_loras

    def add_block(self):
        self.add_task_lora(freeze_previous=True)

    def add_generator_block(self):
        params = []
        for bank in self.banks.values():
            index = bank.add_lora()
            params += [bank.lora_A[index], bank.lora_B[index]]
        return params

    def remove_generator_block(self):
        for bank in self.banks.values():
            bank.lora_A = nn.ParameterList(list(bank.lora_A)[:-1])
            bank.lora_B = nn.ParameterList(list(bank.lora_B)[:-1])

    def run_blocks(self, model, batch, weights):
        self.mixer.weights = weights
        return batch_forward(model, batch)

    def generate_with(self, model, input_ids, attention_mask, weights, **generate_kwargs):
        self.mixer.weights = weights
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, synced_gpus=False, **generate_kwargs)


class SAPTPrompt(SAPT):
    name = "sapt-prompt"
    pet_kind = "prompt"
    description = "SAPT with a soft prompt per task, combined by an input-level shared attention (no task id)"
    Options = SAPTPromptOptions

    def setup_blocks(self, model, backbone):
        self.bank = PromptBank(self.embedding, self.options.prompt_length)
        model.add_module("sapt_prompts", self.bank)

    def num_blocks(self):
        return self.bank.num_prompts

    def add_block(self):
        for prompt in self.bank.prompts:
            prompt.requires_grad_(False)
        self.bank.add_prompt()

    def add_generator_block(self):
        self.bank.add_prompt()
        return [self.bank.prompts[-1]]

    def remove_generator_block(self):
        self.bank.remove_last()

    def run_blocks(self, model, batch, weights):
        return prompt_forward(model, batch, self.bank.weighted(weights))

    def generate_with(self, model, input_ids, attention_mask, weights, **generate_kwargs):
        return prompt_generate(model, input_ids, attention_mask, self.bank.weighted(weights), **generate_kwargs)
