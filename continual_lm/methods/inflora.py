"""InfLoRA (Liang & Li, CVPR 2024, arXiv:2404.00228): interference-free low-rank adaptation.

Task t adds a LoRA dW_t = (alpha/r) B_t A_t to every adapted projection (earlier LoRAs frozen, all summed at test time:
no task id). Its down-projection A_t [r, in] is *designed* before training and stays frozen; only B_t trains, so
the update lies in the row space of A_t. That space avoids the earlier tasks' inputs:

    M        orthonormal basis [in, k] of the earlier tasks' inputs of the projection (the GPM memory)
    C_t      covariance of task t's inputs of the projection (before training, on its training examples)
    A_t      = the top-r eigenvectors of (I - M M^T) C_t (I - M M^T), as rows, / sqrt(3)

so A_t x = 0 for every x in span(M) and the new branch leaves earlier tasks' inputs unchanged. After task t the
memory grows with the directions of task t's inputs (covariance with the trained model) that it does not yet
hold, until it keeps a fraction eps_t of their energy (GPM, Saha et al. 2021), eps_t = eps + (1 - eps) t / T.

The memory bases and the designed A's are method state (``extra_state``: safetensors), so a resumed run designs
the same A's. The GPM helpers here are shared with GainLoRA (methods/gainlora.py). See docs/methods/inflora.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..data.collate import IGNORE_INDEX
from .base import LoRAMethod, TrainExample
from .option_checks import check_choice, check_fields

CRITERIA = ("paper", "code")  # GPM energy: eigenvalues of the covariance (paper) or their squares (reference code)
A_SCALE = 1 / math.sqrt(3)  # row norm of the designed A: the reference's U^T / sqrt(3), peft's Kaiming row norm


# ---- the GPM memory ------------------------------------------------------------------------------------------
def complement_basis(memory: torch.Tensor | None, dim: int) -> torch.Tensor:
    """Orthonormal basis [dim, dim - k] of the orthogonal complement of span(memory [dim, k]) (float64)."""
    if memory is None or memory.shape[1] == 0:
        return torch.eye(dim, dtype=torch.float64)
    q = torch.linalg.qr(memory.double(), mode="complete").Q
    return q[:, memory.shape[1]:]


def top_eigenvectors(matrix: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(eigenvalues descending, eigenvectors as columns) of a symmetric matrix, the ``count`` largest."""
    values, vectors = torch.linalg.eigh(matrix)
    return values.flip(0)[:count], vectors.flip(1)[:, :count]


def design_down_projection(covariance: torch.Tensor, memory: torch.Tensor | None, r: int) -> torch.Tensor:
    """InfLoRA's A_t [r, in]: the top-r eigenvectors of the input covariance restricted to the complement of the
    memory, as rows scaled by 1/sqrt(3). Rows beyond the complement's dimension (a memory of more than in - r
    directions) are zero: those rank components cannot move without touching earlier tasks' inputs."""
    dim = covariance.shape[0]
    basis = complement_basis(memory, dim)  # [in, in - k]
    restricted = basis.T @ covariance.double().cpu() @ basis
    _, vectors = top_eigenvectors(restricted, min(r, basis.shape[1]))
    rows = (basis @ vectors).T * A_SCALE
    return torch.cat([rows, rows.new_zeros(r - rows.shape[0], dim)]) if rows.shape[0] < r else rows


def gpm_threshold(base: float, task_index: int, num_tasks: int) -> float:
    """eps_t = eps + (1 - eps) t / T (t = index of the task just learned, T = tasks in the stream)."""
    return base + (1.0 - base) * task_index / max(num_tasks, 1)


def gpm_update(memory: torch.Tensor | None, covariance: torch.Tensor, threshold: float,
               criterion: str = "paper") -> torch.Tensor | None:
    """The memory after a task whose inputs have ``covariance`` [in, in]: the earlier basis plus the fewest leading
    directions of the inputs' residual (their part outside the memory) that bring the energy the memory captures to
    ``threshold``. ``paper``: energy = squared singular values of the representation matrix = eigenvalues of the
    covariance (GPM's criterion, residual (I-P) C (I-P)); ``code``: the reference code's squares of the covariance's
    singular values, residual (I-P) C. Returns float32 with orthonormal columns (None while nothing is stored)."""
    cov = covariance.double().cpu()
    dim = cov.shape[0]
    projector = None if memory is None else memory.double() @ memory.double().T
    if criterion == "paper":
        total = torch.trace(cov).item()
        residual = cov if projector is None else (torch.eye(dim, dtype=cov.dtype) - projector) @ cov @ (
            torch.eye(dim, dtype=cov.dtype) - projector)
        energies, directions = top_eigenvectors((residual + residual.T) / 2, dim)
        energies = energies.clamp_min(0)
    else:
        total = (torch.linalg.svdvals(cov) ** 2).sum().item()
        residual = cov if projector is None else cov - projector @ cov
        directions, singular, _ = torch.linalg.svd(residual)
        energies = singular ** 2
    if total <= 0:
        return memory
    captured = 1.0 - energies.sum().item() / total  # the share of the inputs' energy already inside the memory
    cumulative = captured + torch.cumsum(energies, 0) / total
    count = 0 if captured >= threshold else int((cumulative < threshold).sum().item()) + 1
    if criterion == "code" and memory is None:  # the reference's first task: r = max(#{cumsum < eps}, 1)
        count = max(count - 1, 1)
    nonzero = int((energies > 1e-12 * total).sum().item())  # directions the inputs actually have
    room = dim - (0 if memory is None else memory.shape[1])
    count = min(count, nonzero, room)
    if count == 0:
        return memory
    new = directions[:, :count]
    stacked = new if memory is None else torch.cat([memory.double(), new], dim=1)
    return torch.linalg.qr(stacked).Q.float()  # re-orthonormalised (the new directions are orthogonal up to rounding)


# ---- covariances of the inputs of chosen modules ---------------------------------------------------------------
class InputCovariance:
    """Forward hooks that sum x x^T over the real tokens of the inputs x of chosen modules.

    Token masks: a causal LM's attention mask (prompt and answer); for seq2seq models the encoder's attention mask
    for modules of the encoder and for modules that read the encoder output (cross-attention keys/values, detected
    by identity with the encoder's output tensor), the answer positions (labels != -100) elsewhere in the decoder.
    An input whose token layout matches no mask counts every position."""

    def __init__(self, model: nn.Module, modules: dict[str, nn.Module]):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.masks: dict[str, torch.Tensor | None] = {"encoder": None, "decoder": None}
        self.encoder_output: torch.Tensor | None = None
        self.handles = []
        encoder = model.get_encoder() if getattr(model.config, "is_encoder_decoder", False) else None
        encoder_modules = {id(m) for m in encoder.modules()} if encoder is not None else set()
        if encoder is not None:
            self.handles.append(encoder.register_forward_hook(self._remember_encoder_output))
        for name, module in modules.items():
            in_encoder = encoder is None or id(module) in encoder_modules
            self.handles.append(module.register_forward_hook(self._hook(name, in_encoder)))

    def set_batch(self, batch: dict[str, torch.Tensor]) -> None:
        self.masks["encoder"] = batch["attention_mask"].bool()
        labels = batch.get("labels")
        self.masks["decoder"] = labels != IGNORE_INDEX if labels is not None else None
        self.encoder_output = None

    def _remember_encoder_output(self, module, inputs, output):
        self.encoder_output = output[0]

    def _hook(self, name: str, in_encoder: bool):
        def hook(module, inputs, output):
            reads_encoder = in_encoder or inputs[0] is self.encoder_output  # the very tensor (before any detach)
            x = inputs[0].detach()
            mask = self.masks["encoder" if reads_encoder else "decoder"]
            rows = x[mask] if mask is not None and mask.shape == x.shape[:-1] else x.reshape(-1, x.shape[-1])
            rows = rows.float()
            gram = rows.T @ rows
            self.sums[name] = self.sums[name] + gram if name in self.sums else gram
            self.counts[name] = self.counts.get(name, 0) + rows.shape[0]
        return hook

    def covariances(self) -> dict[str, torch.Tensor]:
        return {name: total.div_(max(self.counts[name], 1)) for name, total in self.sums.items()}  # in place

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


@torch.no_grad()
def input_covariances(model: nn.Module, modules: dict[str, nn.Module], batches, forward: Callable,
                      on_batch: Callable | None = None) -> dict[str, torch.Tensor]:
    """Covariances of the inputs of ``modules`` over ``batches`` run through ``forward(model, batch)`` (the method's
    training forward, in eval mode: no dropout); ``on_batch(batch)`` sees each batch too (e.g. gate features)."""
    stats = InputCovariance(model, modules)
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            stats.set_batch(batch)
            forward(model, batch)
            if on_batch is not None:
                on_batch(batch)
    finally:
        stats.remove()
        model.train(was_training)
    return stats.covariances()


def own_examples(task_index: int, examples: list[TrainExample]) -> list[TrainExample]:
    """The phase's examples of its own task (without e.g. replayed ones)."""
    return [e for e in examples if e.task_index == task_index]


# ---- the method --------------------------------------------------------------------------------------------------
@dataclass
class InfLoRAOptions:
    threshold: float = 0.995  # eps: energy share of earlier tasks' inputs the memory keeps (grows to 1 at the end)
    criterion: str = "paper"  # GPM energy: paper (eigenvalues of the covariance) | code (the reference's squares)

    def validate(self) -> None:
        check_fields("inflora", self, threshold="a number in (0, 1]")
        check_choice("inflora", self, "criterion", CRITERIA)


class SubspaceLoRA:
    """What InfLoRA and GainLoRA (InfLoRA base) share: per-bank GPM memories and designed, frozen A's.

    Expects ``self.banks`` (LoRAMethod), ``self.model``, ``self.context`` and ``self.tasks``."""

    def init_subspaces(self) -> None:
        self.memory: dict[str, torch.Tensor] = {}  # bank name -> [in, k]

    def freeze_new_down_projections(self) -> None:
        for bank in self.banks.values():
            bank.lora_A[-1].requires_grad_(False)

    def design_down_projections(self, covariances: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, bank in self.banks.items():
                cov = covariances.get(name, torch.zeros(bank.in_features, bank.in_features))  # a bank never called
                A = design_down_projection(cov, self.memory.get(name), bank.r)
                bank.lora_A[-1].copy_(A.to(bank.lora_A[-1].dtype))

    def grow_memories(self, covariances: dict[str, torch.Tensor], task_index: int, threshold: float,
                      criterion: str) -> None:
        eps = gpm_threshold(threshold, task_index, len(self.tasks))
        for name, cov in covariances.items():
            updated = gpm_update(self.memory.get(name), cov, eps, criterion)
            if updated is not None:
                self.memory[name] = updated

    def subspace_state(self) -> dict[str, torch.Tensor]:
        tensors = {f"memory.{name}": M for name, M in self.memory.items()}
        for name, bank in self.banks.items():
            tensors.update({f"down.{t}.{name}": A.detach() for t, A in enumerate(bank.lora_A)})
        return tensors

    def load_subspace_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.memory = {key[len("memory."):]: value.float() for key, value in tensors.items()
                       if key.startswith("memory.")}
        with torch.no_grad():
            for key, value in tensors.items():
                if key.startswith("down."):
                    t, _, name = key[len("down."):].partition(".")
                    A = self.banks[name].lora_A[int(t)]
                    A.copy_(value.to(A.device, A.dtype))


class InfLoRA(SubspaceLoRA, LoRAMethod):
    name = "inflora"
    description = "a new LoRA per task whose frozen down-projection avoids earlier tasks' inputs (InfLoRA); summed"
    Options = InfLoRAOptions
    composable_with = ("migu", "replay")  # not ewc: nothing trained in task t was trained before t
    uses_task_id_at_train = True  # a new LoRA at each task boundary
    uses_task_id_at_test = False
    uses_replay = False
    uses_pseudo_samples = False
    pet_kind = "lora"
    supports_corpus_tasks = False  # designed for instruction tasks; its input statistics are untested on corpora

    def setup(self, model, backbone):
        super().setup(model, backbone)
        self.model = model
        self.init_subspaces()

    def before_task(self, model, task_index, task):
        self.add_task_lora(freeze_previous=True)
        self.freeze_new_down_projections()  # only B_t trains; A_t is designed in train_examples

    def train_examples(self, task_index, examples):
        """Called only when the phase trains (not when a resumed run replays it): design A_t from the task's data."""
        batches = self.context.train_batches(own_examples(task_index, examples))
        self.design_down_projections(input_covariances(self.model, self.banks, batches, self.forward))
        return examples

    def after_task(self, model, task_index, task, examples):
        batches = self.context.train_batches(own_examples(task_index, examples))
        covariances = input_covariances(model, self.banks, batches, self.forward)
        self.grow_memories(covariances, task_index, self.options.threshold, self.options.criterion)

    def extra_state(self):
        return self.subspace_state(), {}

    def load_extra_state(self, tensors, meta):
        self.load_subspace_state(tensors)
