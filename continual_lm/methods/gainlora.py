"""GainLoRA (Liang & Li, NeurIPS 2025, arXiv:2505.15424): gated integration of low-rank adaptation.

Task t adds a LoRA branch dW_t = (alpha/r) B_t A_t to every adapted projection, and a gating module g_t; all
earlier branches and gates are frozen. For an input x every adapted projection computes

    h = W0 x + sum_i a_i (alpha/r) B_i A_i x,        a_i = g_i(x), one coefficient per input and branch

    g_i(x) = | 2 sigmoid(4 cos(k_i, z_i)) - 1 |,     z_i = SiLU(U_i SiLU(D_i pool(x)))

with pool(x) the mean of the input's token embeddings (padding and, for causal LMs, the answer excluded),
D_i [hidden, d], U_i [d, hidden] and the key k_i [d]. Since g(0) = 0, the new branch has no influence on an old
task's input whenever z_t is orthogonal to k_t there. GainLoRA makes it so with GPM memories of the old tasks'
gate inputs at each of the three layers (pool(x), SiLU(D pool(x)), z):

    initialisation   D_t, U_t copied from g_{t-1} (old inputs then give the same z as under every earlier gate);
                     k_t = the top eigenvector of task t's z-covariance restricted to the complement of the
                     z-memory (so cos(k_t, z_old) = 0 and g_t(x_old) = 0), scaled to the norm of a fresh key
    updates          every optimizer step's change of D_t, U_t, k_t is projected onto the complement of the
                     memory of its layer's inputs, so old tasks' z and cos(k_t, z_old) stay unchanged

The branches themselves follow a base method (``--gainlora-base``): ``inflora`` (the paper's main variant, the
reference code) designs and freezes A_t as InfLoRA does and trains B_t; ``olora`` trains A_t and B_t with O-LoRA's
orthogonality loss. Memories, designed A's and gate memories are method state (``extra_state``). See
docs/methods/gainlora.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.collate import IGNORE_INDEX
from ..eval.report import plot_fraction_heatmap
from ..io_utils import atomic_write_json
from ..models.lm_forward import batch_forward
from .base import LoRAMethod
from .inflora import (CRITERIA, SubspaceLoRA, design_down_projection, gpm_threshold, gpm_update, input_covariances,
                      own_examples)
from ..errors import ContinualLMError
from .olora import orthogonality_loss
from .option_checks import check_choice, check_fields

BASES = ("inflora", "olora")
COSINE_SCALE = 4.0  # the reference code's sigmoid(4 * cos): a gate ranges over [0, 2 sigmoid(4) - 1 = 0.964]
GATE_LAYERS = ("input", "hidden", "output")  # the inputs of D, of U and of the key (= z)
GATES_JSON = "gainlora_gates.json"


class Gate(nn.Module):
    """One task's gating module g_i."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.down = nn.Linear(dim, hidden, bias=False)  # nn.Linear's default init, as the reference's trans_input
        self.up = nn.Linear(hidden, dim, bias=False)
        self.key = nn.Parameter(torch.empty(dim).uniform_(-1, 1))  # the reference's prompt_key init

    def features(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each layer's input: pool(x), SiLU(D pool(x)), and z (the key's input)."""
        hidden = F.silu(self.down(pooled))
        return {"input": pooled, "hidden": hidden, "output": F.silu(self.up(hidden))}

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        z = self.features(pooled)["output"]
        cos = F.cosine_similarity(z, self.key.expand_as(z), dim=-1, eps=1e-8)
        return (2 * torch.sigmoid(COSINE_SCALE * cos) - 1).abs()

    def layer_weights(self) -> dict[str, nn.Parameter]:
        """The parameter that reads each layer's input (rows of D and U, and k, act on those inputs)."""
        return {"input": self.down.weight, "hidden": self.up.weight, "output": self.key}


class Gates(nn.Module):
    def __init__(self):
        super().__init__()
        self.gates = nn.ModuleList()

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """a_i for every gate: [batch, tasks]."""
        return torch.stack([gate(pooled) for gate in self.gates], dim=-1)


class GateWeights(nn.Module):
    """The mixer of every LoRABank: the coefficients a [batch, T] GainLoRA sets once per forward (per input, the
    same for every position and layer)."""

    def __init__(self):
        super().__init__()
        self.weights: torch.Tensor | None = None

    def forward(self, bank, x, xa):
        if self.weights is None or self.weights.shape[-1] != xa.shape[-2]:
            raise RuntimeError("GainLoRA: the gate coefficients were not set for this forward")
        return self.weights.unsqueeze(1)  # [B, 1, T]: every position of an input


@dataclass
class GainLoRAOptions:
    base: str = "inflora"  # inflora: designed, frozen A_t (the reference code) | olora: O-LoRA's trained A_t
    threshold: float = 0.995  # InfLoRA base: eps of the branches' input memories (reference --threshold)
    gate_threshold: float = 0.995  # eps of the gates' input memories (reference --transthreshold)
    gate_hidden: int = 100  # width of D_i / U_i (reference --mlp_hidden_dim)
    lambda1: float | list[float] = 0.5  # O-LoRA base: orthogonality weight, one value or one per task
    criterion: str = "paper"  # GPM energy: paper (eigenvalues of the covariance) | code (the reference's squares)
    gate_samples: int = 32  # test inputs per task whose mean gate values are recorded at the end; 0 = off

    def validate(self) -> None:
        check_choice("gainlora", self, "base", BASES)
        check_choice("gainlora", self, "criterion", CRITERIA)
        check_fields("gainlora", self, threshold="a number in (0, 1]", gate_threshold="a number in (0, 1]",
                     gate_hidden="an integer >= 1", lambda1="per task: a number >= 0", gate_samples="an integer >= 0")

    def lambda1_for(self, task_index: int, num_tasks: int) -> float:
        if not isinstance(self.lambda1, list):
            return float(self.lambda1)
        if len(self.lambda1) != num_tasks:
            raise ContinualLMError(f"--gainlora-lambda1: got {len(self.lambda1)} values, expected one per task "
                                   f"({num_tasks})")
        return float(self.lambda1[task_index])


class GainLoRA(SubspaceLoRA, LoRAMethod):
    name = "gainlora"
    description = ("a new LoRA per task mixed by per-task gates kept ~0 on earlier tasks' inputs (GainLoRA; "
                   "--gainlora-base inflora|olora)")
    Options = GainLoRAOptions
    composable_with = ("migu", "replay")
    uses_task_id_at_train = True  # a new LoRA at each task boundary
    uses_task_id_at_test = False
    uses_replay = False
    uses_pseudo_samples = False
    pet_kind = "lora"
    supports_corpus_tasks = False  # instruction-level gates; the end-task fine-tuning would run without them

    # ---- structure ---------------------------------------------------------------------------------------------
    def setup(self, model, backbone):
        super().setup(model, backbone)
        if self.options.base == "olora":  # a wrong-length list fails now, not after hours of training
            self.options.lambda1_for(0, len(self.tasks))
        self.model = model
        self.embedding = model.get_input_embeddings()
        self.is_seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
        self.gates = Gates()
        model.add_module("gainlora_gates", self.gates)  # checkpointed (and DDP-synchronised) with the model
        self.mixer = GateWeights()
        for bank in self.banks.values():
            bank.mixer = self.mixer
        self.init_subspaces()
        self.gate_memory: dict[str, torch.Tensor] = {}  # layer -> [width, k]
        self.current_task = 0
        self.lambda1 = 0.0
        self._gate_start: dict[str, torch.Tensor] | None = None

    @property
    def designs_down_projections(self) -> bool:
        return self.options.base == "inflora"

    def before_task(self, model, task_index, task):
        self.current_task = task_index
        self.add_task_lora(freeze_previous=True)
        if self.designs_down_projections:
            self.freeze_new_down_projections()
        else:
            self.lambda1 = self.options.lambda1_for(task_index, len(self.tasks))
        weight = self.embedding.weight
        gate = Gate(weight.shape[1], self.options.gate_hidden).to(weight.device)
        if len(self.gates.gates):  # D_t, U_t start as g_{t-1}'s; the key stays fresh (designed in train_examples
            previous = self.gates.gates[-1]  # with this fresh key's norm, as get_reg_matrix's pre_norm)
            gate.down.load_state_dict(previous.down.state_dict())
            gate.up.load_state_dict(previous.up.state_dict())
        for old in self.gates.gates:
            old.requires_grad_(False)
        self.gates.gates.append(gate)
        self._gate_start = None

    # ---- the gates ---------------------------------------------------------------------------------------------
    def pooled(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean input embedding over the tokens of ``mask`` [B, S]: [B, d] (float32)."""
        embeds = self.embedding(input_ids).float()
        m = mask.to(embeds.dtype).unsqueeze(-1)
        return (embeds * m).sum(1) / m.sum(1).clamp_min(1.0)

    def input_mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The input tokens of a batch: a causal LM's training batch also holds the answer, which test inputs lack."""
        mask = batch["attention_mask"].bool()
        if not self.is_seq2seq and "labels" in batch:
            mask = mask & (batch["labels"] == IGNORE_INDEX)
        return mask

    def gate_values(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """a_i = g_i(x) for every input of a batch and every task so far: [B, T]."""
        return self.gates(self.pooled(batch["input_ids"], self.input_mask(batch)))

    def forward(self, model, batch):
        self.mixer.weights = self.gate_values(batch)
        return batch_forward(model, batch)

    def generate(self, model, batch, max_new_tokens, **generate_kwargs):
        # Only input_ids/attention_mask are read: the gates, not a task id, weigh the branches.
        self.mixer.weights = self.gate_values({"input_ids": batch["input_ids"],
                                               "attention_mask": batch["attention_mask"]})
        return model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, synced_gpus=False,
                              **generate_kwargs)

    # ---- training ----------------------------------------------------------------------------------------------
    def _statistics(self, task_index: int, examples, layers: tuple[str, ...]):
        """(branch input covariances or {}, covariances of the newest gate's layer inputs) over the task's own
        training examples; the branches' need a forward of the model (InfLoRA base only)."""
        gate = self.gates.gates[-1]
        sums = {layer: None for layer in layers}
        count = 0

        def on_batch(batch):
            nonlocal count
            with torch.no_grad():
                features = gate.features(self.pooled(batch["input_ids"], self.input_mask(batch)))
            for layer in layers:
                f = features[layer].double()
                sums[layer] = f.T @ f if sums[layer] is None else sums[layer] + f.T @ f
            count += batch["input_ids"].shape[0]

        batches = self.context.train_batches(own_examples(task_index, examples))
        if self.designs_down_projections:
            branches = input_covariances(self.model, self.banks, batches, self.forward, on_batch=on_batch)
        else:
            branches = {}
            for batch in batches:
                on_batch(batch)
        return branches, {layer: total.cpu() / max(count, 1) for layer, total in sums.items()}

    def train_examples(self, task_index, examples):
        """Called only when the phase trains: design k_t (and A_t for the InfLoRA base) from the task's data."""
        branches, gate_cov = self._statistics(task_index, examples, ("output",))
        gate = self.gates.gates[-1]
        with torch.no_grad():
            direction = design_down_projection(gate_cov["output"], self.gate_memory.get("output"), 1)[0]
            norm = gate.key.norm()
            gate.key.copy_((direction / direction.norm().clamp_min(1e-30)).to(gate.key) * norm)
        if self.designs_down_projections:
            self.design_down_projections(branches)
        self._gate_start = {layer: p.detach().clone() for layer, p in gate.layer_weights().items()}
        return examples

    def extra_loss(self, model, batch, outputs):
        if self.designs_down_projections or not self.lambda1:
            return None
        orthogonal = orthogonality_loss(list(self.banks.values()))
        return None if orthogonal is None else self.lambda1 * orthogonal

    @torch.no_grad()
    def after_optimizer_step(self, model, optimizer):
        """Keep the new gate's change since the start of the task orthogonal to the earlier tasks' inputs of each of
        its layers: W <- W_start + (W - W_start)(I - M M^T). Equivalent to projecting every step's update."""
        if self.current_task == 0 or self._gate_start is None:
            return
        for layer, weight in self.gates.gates[-1].layer_weights().items():
            memory = self.gate_memory.get(layer)
            if memory is None:
                continue
            # float64, rounded once: float32 BLAS results can differ in the last bit with the tensors' alignment,
            # which would make a resumed run (memories read from a file) differ from an uninterrupted one
            M = memory.to(weight.device, torch.float64)
            start = self._gate_start[layer].double()
            delta = weight.double() - start
            weight.copy_((start + delta - (delta @ M) @ M.T).to(weight.dtype))

    def after_task(self, model, task_index, task, examples):
        branches, gate_cov = self._statistics(task_index, examples, GATE_LAYERS)
        eps = gpm_threshold(self.options.gate_threshold, task_index, len(self.tasks))
        for layer, cov in gate_cov.items():
            updated = gpm_update(self.gate_memory.get(layer), cov, eps, self.options.criterion)
            if updated is not None:
                self.gate_memory[layer] = updated
        if self.designs_down_projections:
            self.grow_memories(branches, task_index, self.options.threshold, self.options.criterion)
        self._gate_start = None

    # ---- state -------------------------------------------------------------------------------------------------
    def extra_state(self):
        tensors = self.subspace_state() if self.designs_down_projections else {}
        tensors.update({f"gate.{layer}": M for layer, M in self.gate_memory.items()})
        return tensors, {}

    def load_extra_state(self, tensors, meta):
        if self.designs_down_projections:
            self.load_subspace_state(tensors)
        self.gate_memory = {key[len("gate."):]: value.float() for key, value in tensors.items()
                            if key.startswith("gate.")}

    # ---- insight: mean gate values per task's test inputs ------------------------------------------------------
    @torch.no_grad()
    def record_gates(self) -> dict:
        """Mean a_i over up to ``gate_samples`` test inputs of each task j (rows j, columns i)."""
        n, rows = self.options.gate_samples, {}
        for j, task in enumerate(self.tasks):
            texts = [e.input for e in task.test[:n]]
            if not texts:
                continue
            total = None
            for batch in self.context.prompt_batches(j, texts):
                values = self.gate_values(batch).sum(0)
                total = values if total is None else total + values
            rows[task.name] = [round(v, 6) for v in (total / len(texts)).tolist()]
        return {"description": "mean GainLoRA gate value a_i = g_i(x) (columns: the gate of the task trained i-th) "
                               "on the test inputs of each task (rows)",
                "gates": [t.name for t in self.tasks[:len(self.gates.gates)]], "samples_per_task": n, "mean": rows}

    def on_run_end(self, model):
        if self.options.gate_samples == 0 or self.context is None:
            return
        record = self.record_gates()
        if not record["mean"]:
            return
        run_dir = self.context.run_dir
        atomic_write_json(run_dir / GATES_JSON, record)
        plot_fraction_heatmap(list(record["mean"].values()), run_dir / "gainlora_gates_heatmap.png",
                              rows=list(record["mean"]), columns=record["gates"], xlabel="gate of task",
                              ylabel="test inputs of task", title="GainLoRA mean gate values a_i",
                              colorbar_label="mean a_i")
