"""Run configuration: one dataclass, loaded from YAML and/or CLI options, validated with clear errors.

A run directory's ``config.yaml`` holds the fully resolved configuration (every default filled in), so a run can
be repeated or resumed from it alone.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ContinualLMError, unknown_choice

SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
MIXED_PRECISION = ("no", "bf16", "fp16")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class LoRAConfig:
    r: int = 8
    alpha: float = 32.0
    dropout: float = 0.1
    targets: list[str] | None = None  # module-name suffixes; None = the model type's query and value projections


@dataclass
class RunConfig:
    # what to run
    benchmark: str = "demo"
    order: str | None = None  # None = the benchmark's first order
    tasks: list[str] | None = None  # explicit task sequence overriding the order
    stream_file: str | None = None  # the YAML of a `custom` stream
    data_dir: str | None = None  # folder holding CL_Benchmark/, SuperNI/, TRACE/ (else env CONTINUAL_LM_DATA)
    method: str = "seqlora"  # a registered method, optionally composed with plugins: "inclora+migu"
    model: str = "smollm2-135m"
    output_dir: str | None = None
    seed: int = 42
    # data sizes (seeded subsampling like the papers)
    max_train_per_task: int | None = None
    max_test_per_task: int | None = None
    max_train_per_class: int | None = None
    max_test_per_class: int | None = None
    max_input_length: int = 512
    max_target_length: int = 50
    prompt_task_name: bool = False
    mlm_probability: float = 0.15  # masked LM: share of each corpus block's tokens that are targets (encoder-only)
    # optimisation
    epochs: int = 1
    lr: float | None = None  # None = the method's default (1e-3 for PET methods, 2e-5 for full fine-tuning)
    batch_size: int = 8
    eval_batch_size: int = 16
    grad_accum: int = 1
    scheduler: str = "constant"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    # evaluation and references
    eval_all_tasks: bool = False
    single_task_from: str | None = None  # run dir of a `single` run, for FWT
    unseen_tasks: list[str] | None = None  # evaluated zero-shot after the stream (and on the base model); never trained
    report_to: str = "none"  # none | tensorboard | wandb (accelerate trackers)
    general_tasks: list[str] | None = None  # lm-eval tasks scored on the base model before and the final model after
    general_task_dir: str | None = None  # folder of lm-eval task YAMLs (local tasks) for general_tasks
    general_limit: int | None = None  # examples per general task (lm-eval's limit); None = all
    # engine
    dtype: str = "float32"
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    keep_checkpoints: str = "all"  # all | last
    trust_remote_code: bool = False
    progress: bool = True
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "configuration") -> "RunConfig":
        if not isinstance(data, dict):
            raise ContinualLMError(f"{source}: expected a mapping of options, got {type(data).__name__}")
        data = dict(data)
        names = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in names:
                raise ContinualLMError(f"{source}: {unknown_choice('option', key, names)}")
        lora = data.pop("lora", None) or {}
        if isinstance(lora, LoRAConfig):
            lora = dataclasses.asdict(lora)
        lora_names = {f.name for f in dataclasses.fields(LoRAConfig)}
        for key in lora:
            if key not in lora_names:
                raise ContinualLMError(f"{source}: {unknown_choice('lora option', key, lora_names)}")
        config = cls(**data, lora=LoRAConfig(**lora))
        config.validate()
        return config

    @classmethod
    def from_yaml(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ContinualLMError(f"config file {path} does not exist") from None
        except yaml.YAMLError as err:
            raise ContinualLMError(f"config file {path} is not valid YAML: {err}") from None
        return cls.from_dict(data or {}, source=str(path))

    def validate(self) -> None:
        def positive(name: str, allow_none: bool = False) -> None:
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ContinualLMError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")

        for name in ("epochs", "batch_size", "eval_batch_size", "grad_accum", "max_input_length", "max_target_length"):
            positive(name)
        for name in ("max_train_per_task", "max_test_per_task", "max_train_per_class", "max_test_per_class",
                     "general_limit"):
            positive(name, allow_none=True)
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ContinualLMError(f"--lr must be a positive number, got {self.lr!r}")
        if isinstance(self.mlm_probability, bool) or not isinstance(self.mlm_probability, (int, float)) \
                or not 0 < self.mlm_probability < 1:
            raise ContinualLMError(f"--mlm-probability must be a number in (0, 1), got {self.mlm_probability!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ContinualLMError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ContinualLMError("--weight-decay and --max-grad-norm must be >= 0")
        for name, allowed in (("scheduler", SCHEDULERS), ("mixed_precision", MIXED_PRECISION), ("dtype", DTYPES),
                              ("keep_checkpoints", ("all", "last")), ("report_to", ("none", "tensorboard", "wandb"))):
            if getattr(self, name) not in allowed:
                raise ContinualLMError(f"--{name.replace('_', '-')}: {unknown_choice('value', getattr(self, name), allowed)}")
        if not isinstance(self.lora.r, int) or self.lora.r <= 0:
            raise ContinualLMError(f"--lora-r must be a positive integer, got {self.lora.r!r}")
        if self.lora.alpha <= 0:
            raise ContinualLMError(f"--lora-alpha must be positive, got {self.lora.alpha!r}")
        if not 0 <= self.lora.dropout < 1:
            raise ContinualLMError(f"--lora-dropout must be in [0, 1), got {self.lora.dropout!r}")
        if self.order is not None:
            self.order = str(self.order)
        if not isinstance(self.method_options, dict):
            raise ContinualLMError("method_options must map a method name to its options")
