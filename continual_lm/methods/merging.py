"""Model-merging baselines: one task vector per task, merged after every task, evaluated without task ids.

    merge-ta    task arithmetic (Ilharco et al., ICLR 2023)     tau = lam * sum_t tau_t
    merge-ties  TIES-Merging (Yadav et al., NeurIPS 2023)        trim each tau_t to its top-k % magnitudes, elect a
                                                                 sign per entry, mean of the agreeing entries, * lam
    merge-dare  DARE (Yu et al., ICML 2024)                      drop each entry of tau_t with probability p, rescale
                                                                 by 1/(1-p), then task arithmetic (or TIES)
    magmax      MagMax (Marczak et al., ECCV 2024)               sequential full fine-tuning; per parameter the
                                                                 tau_t of largest magnitude, * lam

Row i of the accuracy matrix evaluates theta_0 + merge(tau_1..tau_i), the merge of the task vectors learned so far,
without a task id (docs/methods/merging.md).

``merge-*`` train one LoRA per task on the adapted projections: by default each task's LoRA from the base model
(``--merge-*-training independent``: every phase restarts from the initial LoRA, as the single-task reference does),
or one LoRA continued through the stream (``sequential``). The task vector of task t is its *full weight delta*
dW_t = (alpha/r) B_t A_t on every adapted projection, what the merging papers define on weights; merging the factors
A and B separately would not merge the products. The merge runs through peft's utilities (``peft.utils.merge_utils``:
task_arithmetic, ties, dare_linear, dare_ties, calculate_majority_sign_mask, disjoint_merge) on these deltas.
``magmax`` fine-tunes every parameter and keeps, besides the model, only the running per-entry max-magnitude task
vector (the merge is incremental), so it does not store T model copies.

Evaluation: ``generate`` swaps the merged weights into the model for the call and back out afterwards (the trained
state stays in the model, so training, checkpoints and resume never see the merged weights); the merged weights
are computed once per set of task vectors. ``evaluated_model`` writes them into the model for good (``continual-lm
merge``). DARE's random drops are seeded from (run seed, number of task vectors), so a resumed run merges exactly
as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

import torch
from torch import nn

from .base import LoRAMethod, Method
from .option_checks import check_choice, check_fields, none_means

TRAINING = ("independent", "sequential")
SIGN_METHODS = ("total", "frequency")  # TIES' elected sign: sign of the summed values (paper) or of the vote count
TRIM_SCOPES = ("model", "tensor")  # TIES' top-k over each whole task vector (paper) or per weight matrix (peft)


# ---- the merge rules on plain tensors (tests check each against a hand merge) -----------------------------------
def task_arithmetic(deltas: list[torch.Tensor], scale: float) -> torch.Tensor:
    """scale * sum_t delta_t (Ilharco et al.: theta = theta_0 + lambda * sum_t tau_t)."""
    from peft.utils.merge_utils import task_arithmetic as peft_task_arithmetic

    return peft_task_arithmetic(deltas, _weights(deltas, scale))


def trim_thresholds(task_vectors: list[list[torch.Tensor]], density: float) -> list[float]:
    """For each task vector (a list of tensors, one per weight matrix) the magnitude of its k-th largest entry,
    k = int(density * its number of entries): TIES' 'keep the top-k %' over the whole task vector."""
    thresholds = []
    for pieces in task_vectors:
        magnitudes = torch.cat([p.reshape(-1).abs().float() for p in pieces])
        keep = max(1, int(density * magnitudes.numel()))
        thresholds.append(torch.topk(magnitudes, keep, sorted=False).values.min().item())
    return thresholds


def ties(deltas: list[torch.Tensor], scale: float, density: float, sign_method: str = "total",
         thresholds: list[float] | None = None) -> torch.Tensor:
    """TIES-Merging (Yadav et al., Algorithm 1): trim, elect sign, disjoint mean, times lambda.

    With ``thresholds`` (one per task, from :func:`trim_thresholds`) each delta keeps its entries of magnitude >=
    its task's threshold (the paper's trim over the whole task vector); without, peft's ``ties`` trims each tensor
    to its own top ``density`` (per weight matrix)."""
    from peft.utils.merge_utils import calculate_majority_sign_mask, disjoint_merge
    from peft.utils.merge_utils import ties as peft_ties

    if thresholds is None:
        return peft_ties(deltas, _weights(deltas, scale), density, majority_sign_method=sign_method)
    trimmed = torch.stack([d * (d.abs() >= t) for d, t in zip(deltas, thresholds)])
    elected = calculate_majority_sign_mask(trimmed, method=sign_method)
    return scale * disjoint_merge(trimmed, elected)


def dare(deltas: list[torch.Tensor], scale: float, drop_rate: float, combine: str = "linear",
         sign_method: str = "total", seed: int = 0) -> torch.Tensor:
    """DARE (Yu et al.): drop each entry with probability p, rescale the rest by 1/(1-p); then
    task arithmetic (``combine="linear"``) or TIES' sign election and disjoint mean (``"ties"``), times lambda.
    peft draws the drops from the global RNG: forked and seeded here, so the result depends on ``seed`` only."""
    from peft.utils.merge_utils import dare_linear, dare_ties

    devices = [deltas[0].device] if deltas[0].device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if drop_rate == 0:
            return task_arithmetic(deltas, scale) if combine == "linear" else ties(deltas, scale, 1.0, sign_method)
        weights = _weights(deltas, scale)
        if combine == "linear":
            return dare_linear(deltas, weights, 1.0 - drop_rate)
        return dare_ties(deltas, weights, 1.0 - drop_rate, majority_sign_method=sign_method)


def max_magnitude(current: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
    """MagMax's selection (Marczak et al.), one task vector at a time: per entry the value of largest
    magnitude; a tie goes to the newer task (the reference code's ``>=`` in ``merge_max_abs``)."""
    if current is None:
        return new.clone()
    return torch.where(new.abs() >= current.abs(), new, current)


def _weights(deltas: list[torch.Tensor], scale: float) -> torch.Tensor:
    return torch.full((len(deltas),), float(scale), dtype=deltas[0].dtype, device=deltas[0].device)


# ---- evaluation of the merged model -----------------------------------------------------------------------------
class _MergedEvaluation:
    """Evaluates the merge of the task vectors learned so far: ``generate`` swaps ``merged_weights()`` into the
    parameters for the call. Subclasses implement ``_compute_merged_weights`` and call ``_forget_merge`` whenever
    their task vectors change."""

    _merged: dict[nn.Parameter, torch.Tensor] | None = None

    @property
    def num_task_vectors(self) -> int:
        raise NotImplementedError

    def _compute_merged_weights(self) -> dict[nn.Parameter, torch.Tensor]:
        raise NotImplementedError

    def _forget_merge(self) -> None:
        self._merged = None

    def merged_weights(self) -> dict[nn.Parameter, torch.Tensor]:
        """{parameter: the value evaluation gives it} for the task vectors learned so far (computed once)."""
        if self._merged is None:
            with torch.no_grad():
                self._merged = self._compute_merged_weights()
        return self._merged

    @contextlib.contextmanager
    def merged_view(self):
        """The model with the merged weights inside the block, its trained state again after it."""
        swapped = [(p, p.data) for p in self.merged_weights()]
        try:
            for p, value in self.merged_weights().items():
                p.data = value
            yield
        finally:
            for p, original in swapped:
                p.data = original

    def generate(self, model, batch, max_new_tokens, **generate_kwargs):
        with self.merged_view():
            return super().generate(model, batch, max_new_tokens, **generate_kwargs)

    def schedule(self, num_tasks, eval_all_tasks):
        independent = self.options.training == "independent"
        return [replace(p, reset=independent) for p in super().schedule(num_tasks, eval_all_tasks)]


# ---- LoRA task vectors: merge-ta, merge-ties, merge-dare --------------------------------------------------------
@dataclass
class _LoRAMergeOptions:
    training: str = "independent"  # independent: each task's LoRA from the base model; sequential: one LoRA continued
    scale: float | None = none_means("the rule's: 1/n (merge-ta, merge-dare), 1 (merge-ties)")  # lambda

    def _check(self, name: str, **rules: str) -> None:
        check_choice(name, self, "training", TRAINING)
        check_fields(name, self, scale="a number >= 0 or None", **rules)


@dataclass
class TaskArithmeticOptions(_LoRAMergeOptions):
    def validate(self):
        self._check("merge-ta")


@dataclass
class TIESOptions(_LoRAMergeOptions):
    density: float = 0.2  # share of each task vector's entries kept by the trim (the paper's k = 20 %)
    sign: str = "total"  # elected sign: of the summed trimmed values (total, the paper) or of the vote (frequency)
    trim_scope: str = "model"  # top-k over each whole task vector (the paper) or per weight matrix (peft's ties)

    def validate(self):
        self._check("merge-ties", density="a number in (0, 1]")
        check_choice("merge-ties", self, "sign", SIGN_METHODS)
        check_choice("merge-ties", self, "trim_scope", TRIM_SCOPES)


@dataclass
class DAREOptions(_LoRAMergeOptions):
    drop_rate: float = 0.9  # p: share of each task vector's entries dropped at random (the paper's 90 %)
    combine: str = "linear"  # after drop-and-rescale: task arithmetic (linear) or TIES' sign election (ties)
    sign: str = "total"  # elected sign with combine=ties (as merge-ties)

    def validate(self):
        self._check("merge-dare", drop_rate="a number in [0, 1)")
        check_choice("merge-dare", self, "combine", ("linear", "ties"))
        check_choice("merge-dare", self, "sign", SIGN_METHODS)


class _LoRAMerge(_MergedEvaluation, LoRAMethod):
    """One LoRA trained per task (``live``); after each task its factors are kept as task vector t."""

    uses_task_id_at_train = True  # one task vector per task: training needs the task boundaries
    uses_task_id_at_test = False  # the merge of the task vectors answers every input
    uses_replay = False
    uses_pseudo_samples = False
    composable_with = ("migu", "replay")  # not ewc: an independent task's LoRA restarts from the base
    supports_corpus_tasks = False  # its evaluated model exists only inside generate; corpus end tasks read the model
    pet_kind = "lora"
    differs_from_paper = "task vectors are LoRA weight deltas (the papers merge fully fine-tuned models)"

    def __init__(self, config, options=None):
        super().__init__(config, options)
        self.vectors: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] = []  # task t: bank -> (A_t, B_t)

    @property
    def scale(self) -> float:
        if self.options.scale is not None:
            return float(self.options.scale)
        return 1.0 / max(1, self.num_task_vectors)  # the average of the task vectors

    @property
    def num_task_vectors(self) -> int:
        return len(self.vectors)

    def setup(self, model, backbone):
        super().setup(model, backbone)
        self.add_task_lora()
        for bank in self.banks.values():
            bank.lora_A[0].requires_grad_(True)
            bank.lora_B[0].requires_grad_(True)

    def after_task(self, model, task_index, task, examples):
        del self.vectors[task_index:]
        self.vectors.append({name: (bank.lora_A[0].detach().clone(), bank.lora_B[0].detach().clone())
                             for name, bank in self.banks.items()})
        self._forget_merge()

    def delta(self, t: int, name: str) -> torch.Tensor:
        """Task vector t on bank ``name``: (alpha/r) B_t A_t, in float32."""
        A, B = self.vectors[t][name]
        return (B.float() @ A.float()) * self.banks[name].scaling

    def merge_bank(self, name: str, deltas: list[torch.Tensor], index: int) -> torch.Tensor:
        raise NotImplementedError

    def _prepare_merge(self) -> None:
        """Whatever the rule needs across all banks before merging bank by bank (TIES' thresholds)."""

    def _compute_merged_weights(self):
        merged = {}
        if not self.vectors:
            return merged
        self._prepare_merge()
        for index, (name, bank) in enumerate(sorted(self.banks.items())):
            deltas = [self.delta(t, name) for t in range(len(self.vectors))]
            weight = bank.base.weight
            merged[weight] = (weight.float() + self.merge_bank(name, deltas, index)).to(weight.dtype)
            live_B = bank.lora_B[0]
            merged[live_B] = torch.zeros_like(live_B)  # the live LoRA is part of the merge, not added on top
        return merged

    def evaluated_model(self, model: nn.Module) -> nn.Module:
        """The model evaluation uses, as plain modules: every bank replaced by its Linear holding W0 + merged delta."""
        merged = self.merged_weights()
        with torch.no_grad():
            for name, bank in self.banks.items():
                if bank.base.weight in merged:
                    bank.base.weight.copy_(merged[bank.base.weight])
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name) if parent_name else model, child, bank.base)
        self._forget_merge()
        return model

    def extra_state(self):
        tensors = {f"task{t}.{name}.{part}": value.detach().contiguous()
                   for t, vector in enumerate(self.vectors) for name, (A, B) in vector.items()
                   for part, value in (("A", A), ("B", B))}
        return tensors, {"task_vectors": len(self.vectors)}

    def load_extra_state(self, tensors, meta):
        def factor(t: int, name: str, part: str) -> torch.Tensor:
            return tensors[f"task{t}.{name}.{part}"].to(self.banks[name].base.weight.device)

        self.vectors = [{name: (factor(t, name, "A"), factor(t, name, "B")) for name in self.banks}
                        for t in range(int(meta.get("task_vectors", 0)))]
        self._forget_merge()


class TaskArithmetic(_LoRAMerge):
    name = "merge-ta"
    description = "one LoRA per task; evaluates W0 + lambda * sum of the task deltas (task arithmetic)"
    Options = TaskArithmeticOptions

    def merge_bank(self, name, deltas, index):
        return task_arithmetic(deltas, self.scale)


class TIES(_LoRAMerge):
    name = "merge-ties"
    description = "one LoRA per task; evaluates the TIES merge (trim, elect sign, disjoint mean) of the task deltas"
    Options = TIESOptions

    @property
    def scale(self) -> float:
        return float(self.options.scale) if self.options.scale is not None else 1.0

    def _prepare_merge(self):
        self.thresholds = None
        if self.options.trim_scope == "model":
            names = sorted(self.banks)
            self.thresholds = trim_thresholds(
                [[self.delta(t, n) for n in names] for t in range(len(self.vectors))], self.options.density)

    def merge_bank(self, name, deltas, index):
        return ties(deltas, self.scale, self.options.density, self.options.sign, self.thresholds)


class DARE(_LoRAMerge):
    name = "merge-dare"
    description = "one LoRA per task; evaluates the DARE merge (random drop + rescale, then task arithmetic)"
    Options = DAREOptions

    @property
    def scale(self) -> float:
        if self.options.scale is None and self.options.combine == "ties":
            return 1.0
        return super().scale

    def merge_bank(self, name, deltas, index):
        seed = (self.config.seed * 1_000_003 + len(deltas)) * 1009 + index  # per run, merge size and bank
        return dare(deltas, self.scale, self.options.drop_rate, self.options.combine, self.options.sign, seed)


# ---- MagMax: sequential full fine-tuning, max-magnitude merge --------------------------------------------------
@dataclass
class MagMaxOptions:
    training: str = "sequential"  # sequential fine-tuning (the paper); independent: each task from the base model
    scale: float = 0.5  # lambda applied to the max-magnitude task vector (the reference code's value)

    def validate(self):
        check_choice("magmax", self, "training", TRAINING)
        check_fields("magmax", self, scale="a number >= 0")


class MagMax(_MergedEvaluation, Method):
    name = "magmax"
    description = "sequential full fine-tuning; evaluates theta_0 + lambda * per-entry max-magnitude task vector"
    Options = MagMaxOptions
    uses_task_id_at_train = True  # one task vector per task boundary
    uses_task_id_at_test = False  # the merge of the task vectors answers every input
    uses_replay = False
    uses_pseudo_samples = False
    composable_with = ("migu", "replay")
    full_finetuning = True
    supports_corpus_tasks = False
    pet_kind = "full"

    def __init__(self, config, options=None):
        super().__init__(config, options)
        self.running: dict[str, torch.Tensor] = {}  # parameter name -> max-magnitude task vector so far
        self.count = 0

    @property
    def num_task_vectors(self) -> int:
        return self.count

    def setup(self, model, backbone):
        model.requires_grad_(True)
        self.params = dict(model.named_parameters())
        self.theta0 = {n: p.detach().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def after_task(self, model, task_index, task, examples):
        for name, p in self.params.items():
            self.running[name] = max_magnitude(self.running.get(name), p.detach() - self.theta0[name])
        self.count = task_index + 1
        self._forget_merge()

    def _compute_merged_weights(self):
        scale = float(self.options.scale)
        return {p: self.theta0[n] + scale * self.running[n] for n, p in self.params.items() if n in self.running}

    def evaluated_model(self, model: nn.Module) -> nn.Module:
        with torch.no_grad():
            for p, value in self.merged_weights().items():
                p.copy_(value)
        self._forget_merge()
        return model

    def extra_state(self):
        return {f"max.{n}": v.contiguous() for n, v in self.running.items()}, {"task_vectors": self.count}

    def load_extra_state(self, tensors, meta):
        self.running = {n[len("max."):]: v.to(self.params[n[len("max."):]].device) for n, v in tensors.items()}
        self.count = int(meta.get("task_vectors", 0))
        self._forget_merge()
