"""OSF, orthogonal subspace fine-tuning (Nayak et al. 2025, "Sculpting Subspaces: Constrained Full Fine-Tuning in
LLMs for Continual Learning", arXiv 2504.07097), through peft's implementation (``peft.OSFConfig``, peft >= 0.18).

Each target weight matrix is decomposed as W = U S V^T; the top-k singular directions (U_high, S_high, V_high) are
frozen, the rest (U_low, S_low, V_low) train, so the update dW = U_low S_low V_low^T - (the same at the start) of a
task satisfies U_high^T dW = 0 and dW V_high = 0: it lies in the subspace orthogonal to the preserved one.

In a stream, every task decomposes the *current* weights again (what earlier tasks learned sits in their dominant
directions) and preserves a growing share of them: task t (0-based) preserves the top
k_t = floor(t * preserve_per_task * min(out, in)) directions of each matrix (clamped to [1, min(out, in) - 1]; the
first task, with nothing to preserve, fine-tunes the target weights directly). preserve_per_task defaults to 1/T.

What peft needed around it, per phase (docs/methods/osf.md):
* decompose when the phase's training starts (``train_examples``, the first hook only a training phase calls):
  ``peft.tuners.osf.OSFModel`` wraps the target layers in place, with per-module ranks (``rank_pattern``);
* after each optimizer step, project U_low and V_low back onto the orthogonal complement (``before_forward``, i.e.
  before the next step's forward, and once more at the end of the phase): peft projects only the gradients, and
  AdamW's per-entry scaling of a projected gradient leaves the subspace; the authors' later trainer
  (mini_trainer ``project_parameters``) re-projects the parameters for this reason. ``--osf-project-params false``
  gives peft's gradient-only behaviour;
* after the phase, merge the update into the weights and drop the wrapper (``merge_and_unload``; peft's documented
  ``unload()`` would discard it): between phases the model is a plain model, so checkpoints hold only the target
  weights, resume re-decomposes them exactly, and predict/export/merge see an ordinary fine-tuned model.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ContinualLMError
from ..models.inject import matches_target
from .base import Method
from .option_checks import check_choice, check_fields, none_means


@dataclass
class OSFOptions:
    # module-name suffixes (or re:REGEX)
    targets: list[str] | None = none_means("peft's OSF targets for the model type, else every linear layer of the "
                                           "blocks")
    preserve_per_task: float | None = none_means("1/T")  # share of each matrix's rank preserved per finished task
    rank_of: str = "min-dim"  # k counted in singular directions (min-dim, the paper) or as the authors' T5 script
    #                           does, of the larger dimension, clamped (max-dim)
    project_params: bool = True  # re-project U_low/V_low after every step (False: peft's gradient projection only)

    def validate(self):
        check_fields("osf", self, preserve_per_task="a number in (0, 1] or None")
        check_choice("osf", self, "rank_of", ("min-dim", "max-dim"))


def osf_targets(model: nn.Module, patterns: list[str] | None) -> dict[str, nn.Linear]:
    """The linear layers OSF decomposes: ``patterns``, else peft's OSF targets for the model type, else every
    nn.Linear inside the numbered blocks (never the output head)."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_OSF_TARGET_MODULES_MAPPING as table

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    patterns = patterns or table.get(model_type)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    linear = {name: m for name, m in model.named_modules()
              if isinstance(m, nn.Linear) and m is not head and re.search(r"\.\d+\.", f".{name}.")}
    chosen = {n: m for n, m in linear.items() if not patterns or any(matches_target(n, p) for p in patterns)}
    if not chosen:
        suffixes = sorted({n.rsplit(".", 1)[-1] for n in linear})
        raise ContinualLMError(f"--osf-targets {','.join(patterns or [])} matched no linear layer of the blocks; "
                               f"expected name suffixes such as {', '.join(suffixes)} (or re:REGEX)")
    return chosen


def preserved_rank(shape: torch.Size, fraction: float, rank_of: str = "min-dim") -> int:
    """Singular directions kept frozen in a weight of ``shape`` when ``fraction`` of it is preserved: counted of
    min(out, in) (the rank), or of max(out, in) as the authors' script does; at least 1, at most rank - 1."""
    rank = min(shape)
    size = rank if rank_of == "min-dim" else max(shape)
    return min(max(1, math.floor(fraction * size + 1e-9)), rank - 1)


class OSF(Method):
    name = "osf"
    description = "full fine-tuning orthogonal to the earlier tasks' dominant singular directions (peft OSF)"
    Options = OSFOptions
    uses_task_id_at_train = True  # a new decomposition per task
    uses_task_id_at_test = False
    uses_replay = False
    uses_pseudo_samples = False
    composable_with = ("replay",)  # not migu/ewc: their masks and anchors address the weights peft re-parametrises
    full_finetuning = True
    pet_kind = "full"
    differs_from_paper = "uniform preserved share per task (the paper also scales it by layer importance)"

    def __init__(self, config, options=None):
        super().__init__(config, options)
        self.tuner = None  # peft's OSFModel while a phase trains
        self.ranks: dict[str, int] = {}

    def setup(self, model, backbone):
        from ..train.engine import engine_name

        accelerator = getattr(self.context, "accelerator", None)
        if accelerator is not None and engine_name(accelerator).startswith("deepspeed"):
            raise ContinualLMError("method osf: DeepSpeed keeps its own copy of the weights and would undo the "
                                   "subspace projection of every step; run osf on one process or with DDP")
        self.model = model
        self.targets = osf_targets(model, self.options.targets)
        model.requires_grad_(False)
        for module in self.targets.values():  # the weights OSF changes: what the run checkpoints
            module.weight.requires_grad_(True)

    def preserved_fraction(self, task_index: int) -> float:
        step = self.options.preserve_per_task
        step = 1.0 / len(self.tasks) if step is None else float(step)
        return min(1.0, task_index * step)

    # ---- one phase: decompose, train in the orthogonal complement, merge -------------------------------------
    def train_examples(self, task_index, examples):
        self._decompose(task_index)
        return examples

    def _decompose(self, task_index: int) -> None:
        from peft import OSFConfig
        from peft.tuners.osf import OSFModel

        fraction = self.preserved_fraction(task_index)
        self.ranks = {}
        if fraction == 0:  # nothing learned yet: the target weights train directly
            for module in self.targets.values():
                module.weight.requires_grad_(True)
            return
        rank_of = self.options.rank_of
        self.ranks = {n: preserved_rank(m.weight.shape, fraction, rank_of) for n, m in self.targets.items()}
        config = OSFConfig(target_modules=list(self.ranks),
                           rank_pattern={f"^{re.escape(n)}$": k for n, k in self.ranks.items()})
        self.tuner = OSFModel(self.model, config, "default")  # SVD of the current weights; wraps them in place

    def osf_layers(self) -> list:
        from peft.tuners.osf.layer import OSFLayer

        return [m for m in self.model.modules() if isinstance(m, OSFLayer)]

    @torch.no_grad()
    def project_parameters(self) -> None:
        """U_low <- (I - U_high U_high^T) U_low and V_low <- V_low (I - V_high^T V_high) for every wrapped layer.
        Where a factor is square, peft stores no U_high/V_high and the complement is spanned by the initial low
        factor (I - U_high U_high^T = U_low0 U_low0^T), as in peft's gradient hook."""
        for layer in self.osf_layers():
            params = layer.osf_svd_params["default"]
            U, V = params["U_low"], params["V_low"]
            if "default" in layer._osf_U_high:
                U_high = layer._osf_U_high["default"]
                U.sub_(U_high @ (U_high.T @ U))
            else:
                U0 = layer._osf_U_low_init["default"]
                U.copy_(U0 @ (U0.T @ U))
            if "default" in layer._osf_V_high:
                V_high = layer._osf_V_high["default"]
                V.sub_((V @ V_high.T) @ V_high)
            else:
                V0 = layer._osf_V_low_init["default"]
                V.copy_((V @ V0.T) @ V0)

    def before_forward(self, model, batch):
        if self.tuner is not None and self.options.project_params:
            self.project_parameters()  # the update of the previous optimizer step, back into the subspace

    def after_task(self, model, task_index, task, examples):
        if self.tuner is None:
            return
        if self.options.project_params:
            self.project_parameters()  # the last step's update
        self.tuner.merge_and_unload()  # W <- W + dW in place; the layers are plain nn.Linear again
        self.tuner = None

    def extra_state(self):
        return {}, {"preserved_rank": self.ranks}  # for the record: the checkpoint holds the merged weights
