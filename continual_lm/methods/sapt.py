"""SAPT: Shared Attentive learning & selection with attentive reflection (Zhao et al., ACL 2024, arXiv:2401.08295).

SALS  one PET block per task (a LoRA in every target LoRABank: ``sapt-lora``; a soft prompt: ``sapt-prompt``)
      plus a key k_i. For an input x with token embeddings E (the backbone's embedding layer, padding excluded):
          q = LayerNorm(W_up SiLU(W_down maxpool(E)))         a = softmax_i(q . k_i / tau),  tau = sqrt(d_model)
      (Eq. 1-2; ``query_form: reference`` puts the SiLU after W_up as the reference code does) and the block used
      for x is sum_i a_i block_i (Eq. 3; LoRA: the a-weighted low-rank updates; prompt: the a-weighted prompts).
      Training task t trains block t, key t and the query projection (Eq. 4); earlier blocks and keys are frozen.
      The same computation selects blocks at test time: no task id.
ARM   after task t: a temporary generator (its own LoRA / a 300-token prompt, ``generator_*`` options) learns to
      write task t's inputs after the "[Gen]" marker and samples ``pseudo_fraction`` (2 %) pseudo inputs (JSON
      method state); the mean attention of task t's training inputs is stored. While training later tasks, every
      step adds, for EVERY earlier task j, one batch of its pseudo inputs: eta * sum_j KL(stored mean_j, zero-padded
      || current attention) (Eq. 5-6, ``arm: kl``), or the pseudo inputs are replayed as ordinary training data
      with answers from the model of their task (``replay``), or nothing (``none``). See docs/methods/sapt.md.
Records: the train/test attention heatmaps (Figure 3, sapt_attention.json) and, after each task, every seen task's
routing accuracy over the blocks (eval/routing.py, in the same JSON).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.collate import IGNORE_INDEX, Encoded
from ..data.tasks import Example
from ..eval.report import plot_fraction_heatmap
from ..io_utils import atomic_write_json
from ..models.lm_forward import batch_forward, evaluating, model_mode
from ..models.prompt_bank import PromptBank, prompt_forward, prompt_generate
from .option_checks import check_choice, check_fields, none_means
from .base import LoRAMethod, Method, TrainExample
from .prompt_method import PromptMethod, frozen_backbone, input_mask, pseudo_sample_count

ARM_MODES = ("kl", "none", "replay")
QUERY_FORMS = ("paper", "reference")  # where the SiLU of the query projection sits (docs/methods/sapt.md)
GENERATOR_OPTIMIZERS = ("adamw", "adafactor")
GEN_MARKER = "[Gen]"
HEATMAP_JSON = "sapt_attention.json"


@dataclass
class SAPTOptions:
    arm: str = "kl"  # kl: the paper's ARM; none: no ARM; replay: pseudo samples replayed as training data
    eta: float = 0.5  # Eq. 6 weight of the KL term per optimiser step (paper, T5-LoRA SuperNI; presets: per setting)
    query_hidden: int = 100  # hidden size of the query projection
    query_form: str = "paper"  # paper: W_up SiLU(W_down x); reference: SiLU(W_up W_down x) (circle-hit/SAPT code)
    query_lr: float | None = none_means("the run's lr")  # lr of the query projection (W_down, W_up, LayerNorm)
    temperature: float | None = none_means("sqrt(d_model)")  # attention temperature (paper and reference code)
    pseudo_fraction: float = 0.02  # pseudo inputs per task as a fraction of its training size (at least 1)
    pseudo_count: int | None = none_means("pseudo_fraction of the training size")  # pseudo inputs per task
    generator_steps: int | None = none_means("generator_epochs over the task's inputs")  # the generator's steps
    generator_epochs: int = 80  # passes over the task's inputs when generator_steps is None (paper: 80 epochs)
    generator_lr: float = 1e-3  # the generator's learning rate (paper, LoRA generator: 1e-3)
    generator_batch_size: int = 16  # the generator's batch size (paper: 16)
    generator_optimizer: str = "adamw"  # adamw | adafactor (paper: AdamW for the LoRA, Adafactor for the prompt)
    generator_max_tokens: int | None = none_means("the run's --max-input-length")  # longest pseudo input
    generator_top_k: int = 20  # top-k sampling of pseudo inputs (reference: --top_k 20); 0 = no top-k
    generator_repetition_penalty: float = 2.5  # sampling's repetition penalty (reference: repetition_penalty=2.5)

    def validate(self) -> None:
        check_choice("sapt-*", self, "arm", ARM_MODES)
        check_choice("sapt-*", self, "query_form", QUERY_FORMS)
        check_choice("sapt-*", self, "generator_optimizer", GENERATOR_OPTIMIZERS)
        check_fields("sapt-*", self, eta="a number >= 0", query_hidden="an integer >= 1",
                     query_lr="a number > 0 or None", temperature="a number > 0 or None",
                     pseudo_fraction="a number in [0, 1]", pseudo_count="an integer >= 1 or None",
                     generator_steps="an integer >= 1 or None", generator_epochs="an integer >= 1",
                     generator_lr="a number > 0", generator_batch_size="an integer >= 1",
                     generator_max_tokens="an integer >= 2 or None", generator_top_k="an integer >= 0",
                     generator_repetition_penalty="a number > 0")


@dataclass
class SAPTLoRAOptions(SAPTOptions):
    generator_rank: int = 8  # rank of the generator's LoRA (paper Appendix C: 8)
    generator_alpha: float = 32.0  # its alpha (reference pseudo_data/src/run_uie_lora.py: lora_alpha=32)
    generator_dropout: float = 0.1  # its dropout (same file: lora_dropout=0.1)

    def validate(self) -> None:
        super().validate()
        check_fields("sapt-lora", self, generator_rank="an integer >= 1", generator_alpha="a number > 0",
                     generator_dropout="a number in [0, 1)")


@dataclass
class SAPTPromptOptions(SAPTOptions):
    prompt_length: int = 10  # soft-prompt tokens per task (paper Appendix C: 10)
    generator_lr: float = 0.5  # paper Appendix C: the generator prompt trains with Adafactor at 0.5
    generator_optimizer: str = "adafactor"
    generator_prompt_length: int = 300  # tokens of the generator's prompt (paper Appendix C: 300)

    def validate(self) -> None:
        super().validate()
        check_fields("sapt-prompt", self, prompt_length="an integer >= 1", generator_prompt_length="an integer >= 1")


class SharedAttention(nn.Module):
    """The query projection and the per-task keys; returns instance-level attention over the blocks (Eq. 1-2)."""

    def __init__(self, hidden_size: int, query_hidden: int, temperature: float, form: str = "paper"):
        super().__init__()
        self.down = nn.Linear(hidden_size, query_hidden, bias=False)
        self.up = nn.Linear(query_hidden, hidden_size, bias=False)
        self.norm = nn.LayerNorm(hidden_size)
        self.keys = nn.ParameterList()  # one [hidden] key per task
        self.temperature = temperature
        self.form = form

    def add_key(self) -> None:
        """A new key, U(-1, 1) as in the reference code; earlier keys are frozen."""
        for key in self.keys:
            key.requires_grad_(False)
        weight = self.up.weight
        self.keys.append(nn.Parameter(torch.empty(weight.shape[0], device=weight.device).uniform_(-1, 1)))

    def query_parameters(self) -> list[nn.Parameter]:
        """W_down, W_up and the LayerNorm: the "query projection layer" (its own lr: ``query_lr``)."""
        return [*self.down.parameters(), *self.up.parameters(), *self.norm.parameters()]

    @staticmethod
    def pool(embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Max-pool [B, S, H] -> [B, H] over the positions where ``mask`` is set (padding excluded)."""
        return embeds.float().masked_fill(~mask.bool().unsqueeze(-1), float("-inf")).amax(dim=1)

    def query(self, pooled: torch.Tensor) -> torch.Tensor:
        """Eq. 1: LayerNorm(W_up SiLU(W_down x)); the reference code's order is LayerNorm(SiLU(W_up W_down x))."""
        if self.form == "reference":
            return self.norm(F.silu(self.up(self.down(pooled))))
        return self.norm(self.up(F.silu(self.down(pooled))))

    def log_weights(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Eq. 2, log a [B, T], from token embeddings [B, S, H] and the mask of the tokens to pool [B, S]."""
        keys = torch.stack(list(self.keys))
        return torch.log_softmax(self.query(self.pool(embeds, mask)) @ keys.T / self.temperature, dim=-1)

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
    """Shared implementation; the subclasses supply the PET blocks (``setup_blocks``, ``add_block``, and the forward
    and generate that combine them by ``batch_weights``) and the temporary generator of pseudo inputs
    (``*_generator``)."""

    Options = SAPTOptions
    # Training phase t trains block t and key t: the phase's task index picks them, and pseudo inputs and stored
    # attentions are kept per task (paper §8: SAPT "necessitates the identification of tasks during training").
    uses_task_id_at_train = True
    uses_task_id_at_test = False
    uses_replay = False  # no real example of an earlier task is kept
    uses_pseudo_samples = True  # generated inputs of earlier tasks (none with arm: none; a class attribute is static)
    supports_corpus_tasks = False  # instruction-conditioned selection and pseudo-sample replay need labelled tasks

    def __init__(self, config, options=None):
        super().__init__(config, options)
        # Resolved here, so that the run's recorded options hold the values it trains with.
        if self.options.query_lr is None:
            self.options.query_lr = config.lr if config.lr is not None else self.default_lr()
        if self.options.generator_max_tokens is None:
            self.options.generator_max_tokens = config.max_input_length

    # ---- structure ---------------------------------------------------------------------------------------------
    def setup(self, model, backbone):
        options = self.options
        self.is_seq2seq, self.embedding = frozen_backbone(model)
        hidden = self.embedding.weight.shape[1]
        temperature = options.temperature or math.sqrt(hidden)
        self.attention = SharedAttention(hidden, options.query_hidden, temperature, options.query_form)
        self.attention.to(self.embedding.weight.device)
        model.add_module("sapt_attention", self.attention)  # its parameters are checkpointed with the model's
        self.setup_blocks(model, backbone)
        self.pseudo: dict[int, list[dict[str, str]]] = {}  # task -> [{"input", "output"}]
        self.mean_attention: dict[int, list[float]] = {}  # task -> mean attention of its training inputs (ARM)
        self.routing_history: list[dict] = []  # record_routing after each task (eval/routing.py)
        self.current_task = -1
        self._pseudo_streams: dict[int, dict] = {}

    def before_task(self, model, task_index, task):
        self.attention.add_key()
        for p in self.attention.query_parameters():
            p.requires_grad_(True)
        self.add_block()
        self.current_task = task_index
        self._pseudo_streams = {}

    def optimizer_groups(self, params, lr):
        """The query projection trains at ``query_lr`` (paper Appendix C: 1e-2 beside prompts at 3e-1 on Long
        Sequence), everything else (blocks, keys) at the run's lr."""
        query = {id(p) for p in self.attention.query_parameters()}
        groups = [{"params": [p for p in params if id(p) not in query], "lr": lr},
                  {"params": [p for p in params if id(p) in query], "lr": self.options.query_lr}]
        return [group for group in groups if group["params"]]

    # ---- the SALS path -----------------------------------------------------------------------------------------
    def attention_weights(self, input_ids: torch.Tensor, mask: torch.Tensor, log: bool = False) -> torch.Tensor:
        embeds = self.embedding(input_ids)
        return self.attention.log_weights(embeds, mask) if log else self.attention(embeds, mask)

    def batch_weights(self, batch) -> torch.Tensor:
        """The attention over the blocks [B, T] of a training or evaluation batch: the query pools the input
        positions only (the same in training and at test time), never a task id."""
        return self.attention_weights(batch["input_ids"], input_mask(batch, self.is_seq2seq))

    # ---- ARM: the KL term (Eq. 5-6) ----------------------------------------------------------------------------
    def train_examples(self, task_index, examples):
        if self.options.arm != "replay":
            return examples  # every method trains on the same data: nothing is held out
        replayed = [TrainExample(j, Example(p["input"], p["output"]))
                    for j in sorted(self.pseudo) if j < task_index for p in self.pseudo[j]]
        return examples + replayed

    def earlier_tasks_with_pseudo_inputs(self) -> list[int]:
        return [j for j in sorted(self.pseudo) if j < self.current_task and self.pseudo[j]]

    def extra_loss(self, model, batch, outputs):
        """eta * sum_j KL_j: one batch of pseudo inputs of EVERY earlier task j per training step, as the reference
        trainer does (src/cl_trainer.py: one replay batch per earlier task per step, each KL backpropagated)."""
        earlier = self.earlier_tasks_with_pseudo_inputs() if self.options.arm == "kl" else []
        if not earlier:
            return None
        total = sum(self.kl_loss(*self.next_pseudo_batch(j), torch.tensor(self.mean_attention[j])) for j in earlier)
        return self.options.eta * total

    def next_pseudo_batch(self, task_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) of the next ``--batch-size`` pseudo inputs of an earlier task, encoded as
        evaluation encodes inputs; each pass over them follows a new seeded permutation (the reference's
        RandomSampler per earlier task), the same in a resumed run."""
        stream = self._pseudo_streams.get(task_index)
        if stream is None:
            task, collator = self.tasks[task_index], self.context.collator
            stream = self._pseudo_streams[task_index] = {
                "encoded": [collator.encode_prompt(task, Example(p["input"], ""), task_index)
                            for p in self.pseudo[task_index]],
                "order": [],
                "rng": torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.current_task * 1009
                                                     + task_index)}
        if not stream["order"]:
            stream["order"] = torch.randperm(len(stream["encoded"]), generator=stream["rng"]).tolist()
        chosen, stream["order"] = stream["order"][:self.config.batch_size], stream["order"][self.config.batch_size:]
        batch = self.context.collator.generation_batch([stream["encoded"][i] for i in chosen])
        return batch["input_ids"].to(self.context.device), batch["attention_mask"].to(self.context.device)

    def kl_loss(self, input_ids, mask, stored_mean: torch.Tensor) -> torch.Tensor:
        """Eq. 5: KL(stored mean, zero-padded to the current blocks || current attention), batch mean, on inputs of
        one earlier task."""
        log_attention = self.attention_weights(input_ids, mask.bool(), log=True)
        stored = stored_mean.to(log_attention.device, torch.float32)
        target = F.pad(stored, (0, log_attention.shape[-1] - stored.shape[-1]))
        return kl_to_stored(target.expand_as(log_attention), log_attention)

    # ---- ARM: stored attention and pseudo inputs ---------------------------------------------------------------
    @torch.no_grad()
    def mean_attention_on(self, task_index: int, texts: list[str]) -> list[float]:
        rows = [self.attention_weights(b["input_ids"], b["attention_mask"].bool())
                for b in self.context.prompt_batches(task_index, texts)]
        return torch.cat(rows).mean(0).tolist()

    def after_task(self, model, task_index, task, examples):
        inputs = [e.input for e in task.train]
        with evaluating(model):
            # The stored attention of Eq. 5: the paper averages test inputs, the reference code the validation
            # split; here the task's training inputs after training (data every method has; docs/methods/sapt.md).
            self.mean_attention[task_index] = self.mean_attention_on(task_index, inputs)
            self.routing_history = [*self.routing_history[:task_index], self.record_routing(task_index)]
            if self.options.arm != "none" and task_index + 1 < len(self.tasks):
                pseudo = self.generate_pseudo_inputs(model, task_index, inputs)
                replayed = self.options.arm == "replay"
                answers = self.greedy_answers(model, task_index, pseudo) if replayed else [""] * len(pseudo)
                self.pseudo[task_index] = [{"input": i, "output": o} for i, o in zip(pseudo, answers)]

    @torch.no_grad()
    def record_routing(self, last_task: int) -> dict:
        """Routing accuracy (eval/routing.py) of the attention of every test input of tasks 0..last_task over the
        blocks 0..last_task, the own block of task j's inputs being block j."""
        from ..eval.routing import routing_summary

        summary = {}
        for j in range(last_task + 1):
            texts = [e.input for e in self.tasks[j].test]
            rows = [self.attention_weights(b["input_ids"], b["attention_mask"].bool())
                    for b in self.context.prompt_batches(j, texts)]
            if rows:
                summary[self.tasks[j].name] = {"all": routing_summary(torch.cat(rows), j)}
        return {"after": self.tasks[last_task].name, "tasks": summary}

    def pseudo_count(self, task_index: int) -> int:
        return pseudo_sample_count(self.options, self.tasks[task_index])

    def generator_step_count(self, num_inputs: int) -> int:
        options = self.options
        if options.generator_steps is not None:
            return options.generator_steps
        return options.generator_epochs * math.ceil(num_inputs / options.generator_batch_size)

    def _generator_encoded(self, text: str) -> Encoded:
        tokenizer, limit = self.context.collator.tokenizer, self.options.generator_max_tokens
        marker = tokenizer(GEN_MARKER, add_special_tokens=True)["input_ids"]
        body = tokenizer(text if self.is_seq2seq else " " + text, add_special_tokens=False)["input_ids"][:limit - 1]
        body = body + [tokenizer.eos_token_id]
        if self.is_seq2seq:
            return Encoded(marker, body)
        return Encoded(marker + body, [IGNORE_INDEX] * len(marker) + body)

    def _generator_optimizer(self, params: list[nn.Parameter]):
        options = self.options
        if options.generator_optimizer == "adafactor":
            from transformers.optimization import Adafactor

            # a fixed learning rate, as LFPT5 / SAPT-Prompt's generator (no relative step, no parameter scaling)
            return Adafactor(params, lr=options.generator_lr, scale_parameter=False, relative_step=False,
                             warmup_init=False)
        return torch.optim.AdamW(params, lr=options.generator_lr, weight_decay=0.0)

    def generate_pseudo_inputs(self, model, task_index: int, texts: list[str]) -> list[str]:
        """Train a temporary generator on "[Gen]" -> input for ``generator_step_count`` steps (constant lr), sample
        the task's pseudo inputs, remove the generator. Nothing of the model changes."""
        options, collator, device = self.options, self.context.collator, self.context.device
        previous = {p: p.requires_grad for p in model.parameters()}
        model.requires_grad_(False)  # only the generator's own parameters get gradients
        params = self.add_generator()
        try:
            optimizer = self._generator_optimizer(params)
            encoded = [self._generator_encoded(t) for t in texts]
            order = torch.Generator().manual_seed(self.config.seed * 31 + task_index)
            with model_mode(model, training=True):
                queue: list[int] = []
                for _ in range(self.generator_step_count(len(encoded))):
                    if not queue:
                        queue = torch.randperm(len(encoded), generator=order).tolist()
                    chosen, queue = queue[:options.generator_batch_size], queue[options.generator_batch_size:]
                    batch = {k: v.to(device) for k, v in collator.train_batch([encoded[i] for i in chosen]).items()}
                    self.generator_forward(model, batch).loss.backward()
                    if self.config.max_grad_norm:
                        torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            with evaluating(model):
                generated = self._sample_pseudo_inputs(model, self.pseudo_count(task_index))
        finally:
            self.remove_generator()
            for p, flag in previous.items():
                p.requires_grad_(flag)
        return [t for t in generated if t]

    @torch.no_grad()
    def _sample_pseudo_inputs(self, model, count: int) -> list[str]:
        options, tokenizer, device = self.options, self.context.collator.tokenizer, self.context.device
        marker = tokenizer(GEN_MARKER, add_special_tokens=True)["input_ids"]
        texts = []
        for start in range(0, count, options.generator_batch_size):
            ids = torch.tensor([marker] * min(options.generator_batch_size, count - start), device=device)
            output = self.generator_generate(model, ids, torch.ones_like(ids), do_sample=True, num_beams=1,
                                             top_k=options.generator_top_k, top_p=1.0,
                                             repetition_penalty=options.generator_repetition_penalty,
                                             max_new_tokens=options.generator_max_tokens, min_new_tokens=2)
            if not self.is_seq2seq:
                output = output[:, ids.shape[1]:]
            texts += [t.strip() for t in tokenizer.batch_decode(output, skip_special_tokens=True)]
        return texts

    # ---- insight: attention heatmaps (paper Figure 3) ----------------------------------------------------------
    def on_run_end(self, model):
        if self.context is None or self.context.run_dir is None:
            return
        T = len(self.attention.keys)
        with evaluating(model):
            test = [self.mean_attention_on(j, [e.input for e in self.tasks[j].test]) if self.tasks[j].test
                    else [0.0] * T for j in range(T)]
        train = [self.mean_attention.get(j, []) + [0.0] * (T - len(self.mean_attention.get(j, []))) for j in range(T)]
        names = [t.name for t in self.tasks[:T]]
        path = self.context.run_dir
        record = {"tasks": names, "train": train, "test": test}
        if self.routing_history:
            record["routing"] = {
                "description": "per test input: its instance-level attention over the blocks; share/margin/top1 of "
                               "its own task's block (eval/routing.py), after each task of the stream",
                "blocks": "j = the block of task j", "groups": ["all"], "samples_per_task": None,
                "after_task": self.routing_history,
            }
        atomic_write_json(path / HEATMAP_JSON, record)
        for label, matrix in (("train", train), ("test", test)):
            plot_fraction_heatmap(matrix, path / f"sapt_attention_{label}_heatmap.png", rows=names,
                                  columns=[f"block {i + 1}" for i in range(len(names))],
                                  xlabel="PET block (one per task, in stream order)", ylabel="inputs of task",
                                  title=f"SAPT shared attention ({label} time: mean over each task's {label} inputs)")

    # ---- state -------------------------------------------------------------------------------------------------
    def extra_state(self):
        return {}, {"pseudo": {str(k): v for k, v in self.pseudo.items()},
                    "mean_attention": {str(k): v for k, v in self.mean_attention.items()},
                    "routing": self.routing_history}

    def load_extra_state(self, tensors, meta):
        self.pseudo = {int(k): v for k, v in meta.get("pseudo", {}).items()}
        self.mean_attention = {int(k): v for k, v in meta.get("mean_attention", {}).items()}
        self.routing_history = list(meta.get("routing", []))

    # ---- the PET blocks and the generator (subclasses; forward and generate combine the blocks) ------------------
    def setup_blocks(self, model, backbone) -> None:
        raise NotImplementedError

    def add_block(self) -> None:
        """A new trainable block for the new task; earlier blocks frozen."""
        raise NotImplementedError

    def add_generator(self) -> list[nn.Parameter]:
        """A temporary generator block (not a model parameter, not checkpointed); returns its parameters."""
        raise NotImplementedError

    def remove_generator(self) -> None:
        raise NotImplementedError

    def generator_forward(self, model, batch):
        """The training forward of the base model with the generator block alone (no task block)."""
        raise NotImplementedError

    def generator_generate(self, model, input_ids, attention_mask, **generate_kwargs) -> torch.Tensor:
        raise NotImplementedError


def _lora_hook(A: nn.Parameter, B: nn.Parameter, scaling: float, dropout: float):
    """A forward hook adding scaling * B A dropout(x) to a linear layer's output (the generator's LoRA)."""

    def hook(module, args, output):
        x = F.dropout(args[0], p=dropout, training=module.training).to(A.dtype)
        return output + (F.linear(F.linear(x, A), B) * scaling).to(output.dtype)

    return hook


class SAPTLoRA(SAPT, LoRAMethod):
    name = "sapt-lora"
    description = "SAPT with a LoRA per task, combined by an input-level shared attention (no task id)"
    Options = SAPTLoRAOptions
    pet_kind = "lora"

    def setup_blocks(self, model, backbone):
        LoRAMethod.setup(self, model, backbone)
        self.mixer = InstanceWeights()
        for bank in self.banks.values():
            bank.mixer = self.mixer
        self._generator_hooks: list = []

    def num_blocks(self):
        return next(iter(self.banks.values())).num_loras

    def add_block(self):
        self.add_task_lora(freeze_previous=True)

    def forward(self, model, batch):
        self.mixer.weights = self.batch_weights(batch)
        return batch_forward(model, batch)

    def generate(self, model, batch, max_new_tokens, **generate_kwargs):
        self.mixer.weights = self.batch_weights(batch)
        return super().generate(model, batch, max_new_tokens, **generate_kwargs)

    def add_generator(self):
        """A LoRA of its own rank/alpha/dropout on every target projection (paper Appendix C: rank 8), as forward
        hooks on the banks; the task LoRAs get weight 0 while it runs, so it adapts the base model alone."""
        options, params = self.options, []
        for bank in self.banks.values():
            weight = bank.base.weight
            A = torch.empty(options.generator_rank, bank.in_features, device=weight.device, dtype=weight.dtype)
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))
            A = nn.Parameter(A)
            B = nn.Parameter(torch.zeros(bank.out_features, options.generator_rank, device=weight.device,
                                         dtype=weight.dtype))
            scaling = options.generator_alpha / options.generator_rank
            self._generator_hooks.append(bank.register_forward_hook(_lora_hook(A, B, scaling,
                                                                               options.generator_dropout)))
            params += [A, B]
        return params

    def remove_generator(self):
        for handle in self._generator_hooks:
            handle.remove()
        self._generator_hooks = []

    def _no_task_block(self, batch_size: int) -> None:
        self.mixer.weights = torch.zeros(batch_size, self.num_blocks(), device=self.context.device)

    def generator_forward(self, model, batch):
        self._no_task_block(batch["input_ids"].shape[0])
        return batch_forward(model, batch)

    def generator_generate(self, model, input_ids, attention_mask, **generate_kwargs):
        self._no_task_block(input_ids.shape[0])
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, synced_gpus=False, **generate_kwargs)


class SAPTPrompt(SAPT, PromptMethod):
    name = "sapt-prompt"
    pet_kind = "prompt"
    description = "SAPT with a soft prompt per task, combined by an input-level shared attention (no task id)"
    Options = SAPTPromptOptions
    prompt_module = "sapt_prompts"

    def setup_blocks(self, model, backbone):
        self.attach_prompts(model)  # after the shared attention: the order of the model's parameters is kept
        self._generator: nn.Parameter | None = None

    def add_block(self):
        self.bank.add_prompt(freeze_earlier=True)

    def test_prompt(self, model, batch):
        return self.bank.weighted(self.batch_weights(batch))  # Eq. 3: the attention-weighted sum of the prompts

    def add_generator(self):
        """A ``generator_prompt_length``-token prompt (paper Appendix C: 300) from sampled vocabulary embeddings."""
        scratch = PromptBank(self.embedding, self.options.generator_prompt_length)  # not part of the model
        scratch.add_prompt()
        self._generator = scratch.prompts[0]
        return [self._generator]

    def remove_generator(self):
        self._generator = None

    def generator_forward(self, model, batch):
        return prompt_forward(model, batch, self._generator)

    def generator_generate(self, model, input_ids, attention_mask, **generate_kwargs):
        with warnings.catch_warnings():  # the penalty applies to the generated tokens: what is wanted here
            warnings.filterwarnings("ignore", message="Passing `repetition_penalty` with `inputs_embeds`")
            return prompt_generate(model, input_ids, attention_mask, self._generator, **generate_kwargs)
