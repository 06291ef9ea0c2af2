"""The method interface: hooks the one continual-learning loop calls (after Avalanche's strategy/plugins).

Per run:   setup(model)                                  inject PET blocks, choose what trains
Context:   method.context (RunContext) is set before setup: config, tasks, collator, accelerator, run dir,
           and helpers that batch examples the way training/evaluation do (Fisher, attention statistics).
Per phase: before_task(i, task)                          grow/freeze structure (must be deterministic: it is
                                                         replayed on resume before the checkpoint is loaded)
           train_examples(i, examples) -> examples        e.g. replay mixes its memory in
           before_forward(model, batch)                  per training batch, before the forward (e.g. MIGU
                                                         reads the padding mask for its statistics)
           forward(model, batch) -> outputs               the training forward (prompt methods override)
           extra_loss(model, batch, outputs) -> tensor    regularisers (L1, KL, orthogonality, EWC)
           after_backward(model)                          gradient edits (MIGU masks) before the optimiser step
           optimizer_groups(params, lr) -> param groups   the AdamW parameter groups of a phase (own lrs per part)
           after_optimizer_step(model, optimizer)         right after each real optimiser step (gradients synced;
                                                         not under DeepSpeed, which steps inside backward): MIGU
                                                         writes back the rows its mask kept out of the step
           after_task(i, task, train_examples)            compute state (Fisher, memory, stored attention)
Eval:      generate(model, batch, max_new_tokens, **kw)  batch holds input_ids/attention_mask only; the task id
                                                         is added (batch["task_ids"]) only when the method
                                                         declares uses_task_id_at_test; ``kw`` (evaluation's
                                                         stopping_criteria) must reach transformers' generate.
End:       on_run_end(model)                             after the last phase, main process: analyses and
                                                         figures into context.run_dir (*_heatmap.png is shown
                                                         by the report)
State:     extra_state() / load_extra_state(tensors, meta)   method state that is not a model parameter.

A ``+`` composition ("inclora+migu") is a Composite: the base method plus plugins, each hook called in order.

Declared, not hooks: the protocol (``uses_task_id_at_train``, ``uses_task_id_at_test``, ``uses_replay``,
``uses_pseudo_samples``; a Composite ORs them), the kind of PET block trained (``pet_kind``) and a default that
differs from the paper's setup (``differs_from_paper``). ``Method.create(config)`` builds the object (a method may
pick a variant class from its options).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..config import RunConfig
from ..data.tasks import Example, Task
from ..errors import ContinualLMError, unknown_choice
from ..models.inject import find_lora_banks, inject_lora_banks
from ..models.lm_forward import batch_forward


@dataclass(frozen=True)
class Phase:
    """One training phase of the loop: fills row ``row`` of the accuracy matrix."""

    row: int
    train_tasks: tuple[int, ...]
    eval_tasks: tuple[int, ...]
    reset: bool = False  # start from the initial trainable state (single-task reference)


@dataclass(frozen=True)
class TrainExample:
    task_index: int
    example: Example


@dataclass
class NoOptions:
    pass


@dataclass
class RunContext:
    """What a method may use of its run besides the model: set as ``method.context`` before ``setup``."""

    config: RunConfig
    tasks: list[Task]
    collator: Any  # data.collate.Collator
    accelerator: Any
    run_dir: Any  # pathlib.Path

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def train_batches(self, examples: list[TrainExample], batch_size: int | None = None):
        """Padded training batches (input_ids, attention_mask, labels, task_ids) on the device, in order."""
        size = batch_size or self.config.batch_size
        encoded = [self.collator.encode_train(self.tasks[e.task_index], e.example, e.task_index) for e in examples]
        for start in range(0, len(encoded), size):
            batch = self.collator.train_batch(encoded[start:start + size])
            yield {k: v.to(self.device) for k, v in batch.items()}

    def prompt_batches(self, task_index: int, texts: list[str], batch_size: int | None = None):
        """Padded prompt-only batches (input_ids, attention_mask) as evaluation builds them, in order."""
        size = batch_size or self.config.eval_batch_size
        task = self.tasks[task_index]
        encoded = [self.collator.encode_prompt(task, Example(text, ""), task_index) for text in texts]
        for start in range(0, len(encoded), size):
            batch = self.collator.generation_batch(encoded[start:start + size])
            yield {k: v.to(self.device) for k, v in batch.items()}


class Method:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    is_plugin: ClassVar[bool] = False
    composable_with: ClassVar[tuple[str, ...]] = ()  # plugins a base method accepts after '+'
    # The declared protocol: what the method uses beyond the current task's data (docs/methods.md, "Protocol").
    # Reports show it beside every row; results.json records it ("protocol").
    uses_task_id_at_train: ClassVar[bool] = False  # training needs task identity: per-task blocks/state/markers
    uses_task_id_at_test: ClassVar[bool] = False  # evaluation hands it batch["task_ids"]
    uses_replay: ClassVar[bool] = False  # stored real examples of earlier tasks
    uses_pseudo_samples: ClassVar[bool] = False  # generated samples of earlier tasks
    differs_from_paper: ClassVar[str] = ""  # a default that differs from the paper's setup (`continual-lm list`)
    # The kind of block the method trains: "lora", "prompt" (soft prompts) or "full" (every weight). Its FWT reference
    # must train the same kind (`--method single --single-pet KIND`; --single-task-from checks it).
    pet_kind: ClassVar[str] = "lora"
    full_finetuning: ClassVar[bool] = False  # decides the default learning rate
    soft_prompt_tuning: ClassVar[bool] = False  # trains only soft prompts: a larger default learning rate
    # Continual pre-training (unlabelled corpus tasks, docs/continual_pretraining.md): False = refused; None = yes
    # unless the method overrides forward/generate (knowledge outside the model body the end task fine-tunes).
    supports_corpus_tasks: ClassVar[bool | None] = None

    @classmethod
    def create(cls, config: RunConfig) -> "Method":
        """The method object for ``config`` (``build_method`` calls this; a method may choose a variant class from
        its options, as the single-task reference does for its kind of PET block)."""
        return cls(config)

    def __init__(self, config: RunConfig, options: Any | None = None):
        self.config = config
        self.options = options if options is not None else build_options(self.Options, self.name, config.method_options)
        self.tasks: list[Task] = []
        self.context: RunContext | None = None

    # ---- structure -------------------------------------------------------------------------------------------
    def setup(self, model: nn.Module, backbone) -> None:
        """Called once before the first phase, after the global seed is set."""

    def schedule(self, num_tasks: int, eval_all_tasks: bool) -> list[Phase]:
        return [
            Phase(i, (i,), tuple(range(num_tasks)) if eval_all_tasks else tuple(range(i + 1)))
            for i in range(num_tasks)
        ]

    def before_task(self, model: nn.Module, task_index: int, task: Task) -> None:
        pass

    # ---- training --------------------------------------------------------------------------------------------
    def train_examples(self, task_index: int, examples: list[TrainExample]) -> list[TrainExample]:
        return examples

    def before_forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> None:
        pass

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]):
        """The loss of a training batch (and the answer positions' logits: ``models.lm_forward``)."""
        return batch_forward(model, batch)

    def extra_loss(self, model: nn.Module, batch: dict[str, torch.Tensor], outputs) -> torch.Tensor | None:
        return None

    def after_backward(self, model: nn.Module) -> None:
        pass

    def after_optimizer_step(self, model: nn.Module, optimizer) -> None:
        """Called after every optimizer step that happened (gradients synced), before the next forward."""

    def after_task(self, model: nn.Module, task_index: int, task: Task, examples: list[TrainExample]) -> None:
        pass

    def optimizer_groups(self, params: list[nn.Parameter], lr: float) -> list[dict]:
        """The torch optimizer parameter groups of a phase's trainable ``params`` (each group a dict with "params"
        and "lr"): one group at the run's ``lr`` unless the method trains some parameters at their own rate."""
        return [{"params": params, "lr": lr}]

    # ---- evaluation ------------------------------------------------------------------------------------------
    def generate(self, model: nn.Module, batch: dict[str, torch.Tensor], max_new_tokens: int,
                 **generate_kwargs) -> torch.Tensor:
        """Greedy output ids for a prompt batch; ``generate_kwargs`` go on to transformers' ``generate`` (evaluation
        passes ``stopping_criteria``: eval/generate.py), also from the methods that override this."""
        return model.generate(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
            max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
            synced_gpus=False,  # each process generates for its own share of inputs (eval/generate.py)
            **generate_kwargs,
        )

    @torch.no_grad()
    def greedy_answers(self, model: nn.Module, task_index: int, inputs: list[str]) -> list[str]:
        """What evaluation would predict for raw inputs of a task (its prompt batches through ``generate``), e.g. to
        label generated pseudo samples."""
        collator = self.context.collator
        answers = []
        for batch in self.context.prompt_batches(task_index, inputs):
            output = self.generate(model, batch, collator.max_new_tokens(self.tasks[task_index]))
            if not getattr(model.config, "is_encoder_decoder", False):
                output = output[:, batch["input_ids"].shape[1]:]
            answers += [t.strip() for t in collator.tokenizer.batch_decode(output, skip_special_tokens=True)]
        return answers

    def on_run_end(self, model: nn.Module) -> None:
        pass

    # ---- state -----------------------------------------------------------------------------------------------
    def extra_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Method state that is not a model parameter: (tensors for safetensors, JSON-able metadata)."""
        return {}, {}

    def load_extra_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        pass

    def default_lr(self) -> float:
        """2e-5 for full fine-tuning, 3e-2 for soft prompts (peft's prompt-tuning examples with AdamW; the prompt
        papers use 0.03-0.5), 1e-3 for LoRA-style PET (O-LoRA's T5 scripts)."""
        if self.full_finetuning:
            return 2e-5
        return 3e-2 if self.soft_prompt_tuning else 1e-3


PROTOCOL_FLAGS = {  # results.json "protocol" key -> Method attribute
    "task_id_at_train": "uses_task_id_at_train",
    "task_id_at_test": "uses_task_id_at_test",
    "replay": "uses_replay",
    "pseudo_samples": "uses_pseudo_samples",
}


def protocol(method: Method | type[Method]) -> dict[str, bool]:
    """The declared protocol of a method (class or object; a Composite ORs its parts)."""
    return {key: bool(getattr(method, attr)) for key, attr in PROTOCOL_FLAGS.items()}


def method_parts(method: Method) -> list[Method]:
    """The base method and its plugins (one element for a plain method)."""
    return list(getattr(method, "parts", [method]))


def resolved_options(method: Method) -> dict[str, dict[str, Any]]:
    """Every option of every part with the value the run uses (defaults included), for the resolved config.yaml."""
    return {part.name: dataclasses.asdict(part.options) for part in method_parts(method)}


def overrides(cls: type[Method], hook: str) -> bool:
    """Whether a method class defines its own ``hook`` instead of Method's (what engines and continual
    pre-training can accept follows from it)."""
    return getattr(cls, hook) is not getattr(Method, hook)


def build_options(options_cls: type, method_name: str, method_options: dict[str, dict[str, Any]]):
    """The method's Options dataclass from ``method_options[method_name]``, with clear errors."""
    given = dict(method_options.get(method_name) or {})
    names = {f.name for f in dataclasses.fields(options_cls)}
    for key in given:
        if key not in names:
            raise ContinualLMError(f"--{method_name}-*: {unknown_choice(f'{method_name} option', key, names or ['(none)'])}")
    options = options_cls(**given)
    check = getattr(options, "validate", None)
    if check is not None:
        check()
    return options


class LoRAMethod(Method):
    """Shared plumbing of the methods that put LoRAs on the target projections (one bank per projection)."""

    def setup(self, model: nn.Module, backbone) -> None:
        from ..models.backbone import default_lora_targets

        lora = self.config.lora
        targets = lora.targets or default_lora_targets(model)
        self.banks = inject_lora_banks(model, targets, r=lora.r, alpha=lora.alpha, dropout=lora.dropout)
        model.requires_grad_(False)

    def add_task_lora(self, freeze_previous: bool = True) -> None:
        for bank in self.banks.values():
            if freeze_previous:
                for p in list(bank.lora_A) + list(bank.lora_B):
                    p.requires_grad_(False)
            bank.add_lora()

    @staticmethod
    def banks_of(model: nn.Module):
        return find_lora_banks(model)


class Composite(Method):
    """A base method with plugins ("seqlora+replay+migu"): every hook runs for each part in order."""

    def __init__(self, parts: list[Method]):
        self.parts = parts
        self.base = parts[0]
        self.config = self.base.config
        self.name = "+".join(p.name for p in parts)
        for attr in PROTOCOL_FLAGS.values():  # the composition uses whatever any part uses
            setattr(self, attr, any(getattr(p, attr) for p in parts))
        self.full_finetuning = self.base.full_finetuning
        self.soft_prompt_tuning = self.base.soft_prompt_tuning
        self.pet_kind = self.base.pet_kind
        self._context: RunContext | None = None

    @property
    def context(self):
        return self._context

    @context.setter
    def context(self, value):
        self._context = value
        for part in self.parts:
            part.context = value

    @property
    def tasks(self):
        return self.base.tasks

    @tasks.setter
    def tasks(self, value):
        for part in self.parts:
            part.tasks = value

    def setup(self, model, backbone):
        for part in self.parts:
            part.setup(model, backbone)

    def schedule(self, num_tasks, eval_all_tasks):
        return self.base.schedule(num_tasks, eval_all_tasks)

    def before_task(self, model, task_index, task):
        for part in self.parts:
            part.before_task(model, task_index, task)

    def train_examples(self, task_index, examples):
        for part in self.parts:
            examples = part.train_examples(task_index, examples)
        return examples

    def before_forward(self, model, batch):
        for part in self.parts:
            part.before_forward(model, batch)

    def forward(self, model, batch):
        return self.base.forward(model, batch)

    def extra_loss(self, model, batch, outputs):
        terms = [t for t in (p.extra_loss(model, batch, outputs) for p in self.parts) if t is not None]
        return sum(terms) if terms else None

    def after_backward(self, model):
        for part in self.parts:
            part.after_backward(model)

    def after_optimizer_step(self, model, optimizer):
        for part in self.parts:
            part.after_optimizer_step(model, optimizer)

    def after_task(self, model, task_index, task, examples):
        for part in self.parts:
            part.after_task(model, task_index, task, examples)

    def optimizer_groups(self, params, lr):
        return self.base.optimizer_groups(params, lr)

    def generate(self, model, batch, max_new_tokens, **generate_kwargs):
        return self.base.generate(model, batch, max_new_tokens, **generate_kwargs)

    def on_run_end(self, model):
        for part in self.parts:
            part.on_run_end(model)

    def extra_state(self):
        tensors, meta = {}, {}
        for part in self.parts:
            t, m = part.extra_state()
            tensors.update({f"{part.name}.{k}": v for k, v in t.items()})
            meta[part.name] = m
        return tensors, meta

    def load_extra_state(self, tensors, meta):
        for part in self.parts:
            prefix = f"{part.name}."
            part.load_extra_state({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)},
                                  meta.get(part.name, {}))

    def default_lr(self):
        return self.base.default_lr()


def register_method(cls: type[Method] | None = None, *, name: str | None = None):
    """Register a method class of your own under ``name`` (default: its ``name`` attribute), without editing
    methods/registry.py: ``@register_method`` or ``@register_method(name="mine")``. The name must be new (or already
    hold this class); a plugin (``is_plugin = True``) composes with the base methods that list it in
    ``composable_with``."""
    from .registry import METHODS

    def add(cls):
        key = name or getattr(cls, "name", "")
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise ContinualLMError(f"register_method: {cls!r} is not a subclass of continual_lm.Method")
        if not key or not isinstance(key, str) or "+" in key or key != key.strip():
            raise ContinualLMError(f"register_method: {cls.__name__} needs a name (its `name` class attribute, "
                                   f"without '+' or spaces), got {key!r}")
        if key in METHODS and METHODS[key] is not cls:
            raise ContinualLMError(f"register_method: a method named {key!r} is already registered ({METHODS[key]})")
        cls.name = key
        METHODS[key] = cls
        return cls

    return add if cls is None else add(cls)


def build_method(config: RunConfig) -> Method:
    from .registry import method_class, split_method_spec

    names = split_method_spec(config.method)
    unused = [name for name in config.method_options if name not in names]
    if unused:  # options of a method the run does not include would be silently ignored
        raise ContinualLMError(f"options of {', '.join(repr(n) for n in unused)} (--{unused[0]}-* or method_options) "
                               f"were given, but --method {config.method!r} does not include it; drop them, or add "
                               f"the method (e.g. --method {names[0]}+{unused[0]} for a plugin)")
    parts = [method_class(name).create(config) for name in names]
    return parts[0] if len(parts) == 1 else Composite(parts)
