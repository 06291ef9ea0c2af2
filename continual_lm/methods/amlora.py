"""AM-LoRA: an attentional mixture of per-task LoRAs with an L1-sparse selector (Liu et al., 2024, arXiv:2409.19611).

Per adapted projection, task n adds LoRA dw_n = B_n A_n (the base and LoRAs 1..n-1 frozen) and a dense vector
W_r,n in R^{d_out}; LoRA 0 is the *zero LoRA* (its output is always 0). Per token

    g = softmax_i( W_r,i^T (dw_i x) )  over i = 0..n,     h = W_0 x + sum_i g_i (dw_i x)

computed without the n full-width LoRA outputs: W_r,i^T (dw_i x) = scaling * (B_i^T W_r,i) . (A_i x), where
A_i x is what the LoRABank already computes for all LoRAs with one matmul. The zero LoRA's score is W_r,0^T 0 = 0.
Training adds lambda_t * sum over layers and LoRAs of ||W_r,i||_1 (lambda per task). See docs/methods/amlora.md.

Records (``attention_samples`` test inputs per task; 0 = none): the mean g per layer and LoRA at the end (Figure 4,
amlora_attention.json + heatmaps) and, after each task, each seen task's routing accuracy (eval/routing.py).
"""
from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ContinualLMError
from ..models.lm_forward import evaluating, keeps_answer_logits
from .option_checks import check_choice, check_fields
from .base import LoRAMethod

MODES = ("all", "new")
ATTENTION_JSON = "amlora_attention.json"
ROUTING_PNG = "amlora_routing_heatmap.png"  # per input task: its selector weight on each LoRA (mean over layers)


class AttentionSelector(nn.Module):
    """The selector of one LoRABank (set as ``bank.mixer``): one dense vector W_r,i [d_out] per LoRA, i = 0 the zero
    LoRA. Returns the weights g_1..n of the bank's LoRAs; ``last_distribution`` keeps g_0..n when the bank records."""

    def __init__(self, out_features: int):
        super().__init__()
        self.out_features = out_features
        self.dense = nn.ParameterList()  # W_r,0 (zero LoRA), W_r,1, ... : separate so earlier ones can be frozen
        self.last_distribution: torch.Tensor | None = None

    def add_dense(self, like: torch.Tensor) -> None:
        """A new W_r,i, initialised like nn.Linear(d_out, 1)'s weight: U(-1/sqrt(d_out), 1/sqrt(d_out))."""
        bound = 1.0 / math.sqrt(self.out_features)
        weight = torch.empty(self.out_features, device=like.device, dtype=like.dtype).uniform_(-bound, bound)
        self.dense.append(nn.Parameter(weight))

    def keys(self, bank) -> torch.Tensor:
        """scaling * B_i^T W_r,i for i = 1..n, [n, r]: W_r,i^T (dw_i x) = keys_i . (A_i x)."""
        n = bank.num_loras
        B = torch.cat(list(bank.lora_B), dim=1).view(self.out_features, n, bank.r)  # [out, n, r]
        W = torch.stack(list(self.dense)[1:n + 1])  # [n, out]
        return torch.einsum("onr,no->nr", B, W.to(B.dtype)) * bank.scaling

    def distribution(self, bank, xa: torch.Tensor) -> torch.Tensor:
        """g_0..n [..., n+1] from xa = A_i x per LoRA [..., n, r]."""
        scores = (xa * self.keys(bank).to(xa.dtype)).sum(-1)  # [..., n]
        logits = F.pad(scores.float(), (1, 0))  # the zero LoRA's score first: W_r,0^T 0 = 0
        return torch.softmax(logits, dim=-1).to(xa.dtype)

    def forward(self, bank, x: torch.Tensor, xa: torch.Tensor) -> torch.Tensor:
        dist = self.distribution(bank, xa)
        if bank.record_weights:
            self.last_distribution = dist.detach()
        return dist[..., 1:]


@dataclass
class AMLoRAOptions:
    # lambda of the L1 term (Eq. 6): one value or one per task. 1e-5 = the paper's value for orders 1-3 (§7.3);
    # its per-task lists for the long orders come with --preset paper (continual_lm/presets/paper/amlora.yaml).
    l1: float | list[float] = 1e-5
    mode: str = "all"  # all: every selector dense layer trains with each task (AR); new: only the new one (NR)
    attention_samples: int = 32  # test inputs per task recorded after each task and at the end; 0 = off

    def validate(self) -> None:
        check_choice("amlora", self, "mode", MODES)
        check_fields("amlora", self, l1="per task: a number >= 0", attention_samples="an integer >= 0")


class AMLoRA(LoRAMethod):
    name = "amlora"
    description = "a new LoRA per task mixed per token by an L1-sparse attentional selector with a zero LoRA"
    Options: ClassVar[type] = AMLoRAOptions
    composable_with = ("migu", "replay", "ewc")
    uses_task_id_at_train = True  # a new LoRA and selector row at each task boundary, lambda per task
    uses_task_id_at_test = False  # the selector mixes the LoRAs per token
    uses_replay = False
    uses_pseudo_samples = False
    pet_kind = "lora"
    supports_corpus_tasks = False  # its selector mixes task LoRAs per instruction (docs/continual_pretraining.md)

    current_task = 0

    def setup(self, model, backbone):
        lam = self.options.l1
        if isinstance(lam, list) and self.tasks and len(lam) != len(self.tasks):
            raise ContinualLMError(f"--amlora-l1: expected one value or one per task ({len(self.tasks)} tasks), "
                                   f"got {len(lam)} values")
        super().setup(model, backbone)
        self.routing_history: list[dict] = []  # record_routing after each task (method state: survives a resume)
        self._final_attention: dict | None = None  # Figure 4's record, taken with the last task's routing record

    def l1_lambda(self, task_index: int) -> float:
        lam = self.options.l1
        if isinstance(lam, list):
            if task_index >= len(lam):
                raise ContinualLMError(f"--amlora-l1 has {len(lam)} values; task {task_index + 1} needs one")
            return float(lam[task_index])
        return float(lam)

    def before_task(self, model, task_index, task):
        self.current_task = task_index
        self.add_task_lora(freeze_previous=True)
        for bank in self.banks.values():
            if bank.mixer is None:
                bank.mixer = AttentionSelector(bank.out_features)
                bank.mixer.add_dense(bank.base.weight)  # W_r,0 of the zero LoRA
            bank.mixer.add_dense(bank.base.weight)
            new = bank.num_loras  # index of the new LoRA's dense layer (0 is the zero LoRA's)
            for i, weight in enumerate(bank.mixer.dense):
                weight.requires_grad_(self.options.mode == "all" or i == new or task_index == 0)

    def selector_weights(self) -> list[torch.Tensor]:
        return [w for bank in self.banks.values() for w in bank.mixer.dense]

    def extra_loss(self, model, batch, outputs):
        lam = self.l1_lambda(self.current_task)
        if lam == 0:
            return None
        return lam * torch.cat(self.selector_weights()).abs().sum()

    # ---- the paper's Figure 4: mean selector weights per layer and LoRA --------------------------------------
    @contextlib.contextmanager
    def _recording(self, model):
        """The model in eval mode with every bank keeping its selector distribution; restored afterwards."""
        banks = self.banks_of(model)
        with evaluating(model):
            for bank in banks.values():
                bank.record_weights = True
            try:
                yield banks
            finally:
                for bank in banks.values():
                    bank.record_weights = False
                    bank.mixer.last_distribution = None

    def _selector_batches(self, model, banks, task_index: int, texts: list[str]):
        """(attention mask [B, S], {bank: g_0..n [B, S', n+1]}) per batch of ``texts`` encoded as task inputs."""
        seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
        for batch in self.context.prompt_batches(task_index, texts):
            inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            if seq2seq:
                start = model.config.decoder_start_token_id
                inputs["decoder_input_ids"] = torch.full_like(batch["input_ids"][:, :1], start)
            elif keeps_answer_logits(type(model)):
                inputs["logits_to_keep"] = 1  # only the selector is read: skip the vocabulary head's [B, S, V]
            model(**inputs)
            yield batch["attention_mask"], {name: bank.mixer.last_distribution.float() for name, bank in banks.items()}

    def _task_passes(self, model, last_task: int):
        """One forward over up to ``attention_samples`` test inputs of each task 0..last_task, yielding per task
        (j, texts, {bank: token-weighted sum of g}, {bank: token count}, {bank: [per-input mean g [B, n+1]]}):
        what Figure 4's record and the routing record read, from the same forwards."""
        with self._recording(model) as banks:
            for j in range(last_task + 1):
                texts = [e.input for e in self.context.tasks[j].test[:self.options.attention_samples]]
                sums, counts, per_input = {}, {}, {name: [] for name in banks}
                for mask, dists in self._selector_batches(model, banks, j, texts):
                    for name, dist in dists.items():
                        if dist.shape[:-1] == mask.shape:  # token positions of the input: skip padding
                            m = mask.to(dist.dtype).unsqueeze(-1)
                            total, count = (dist * m).flatten(0, -2).sum(0), m.sum()
                        else:  # e.g. a decoder's own positions
                            total, count = dist.flatten(0, -2).sum(0), dist[..., 0].numel()
                        sums[name] = sums.get(name, 0) + total
                        counts[name] = counts.get(name, 0) + float(count)
                        per_input[name].append(_mean_over_tokens(dist, mask))
                yield j, texts, sums, counts, per_input

    @torch.no_grad()
    def record_attention(self, model, passes=None) -> dict:
        """Mean g_0..n per bank on up to ``attention_samples`` test inputs of each task (padding masked out); from
        ``passes`` (``_task_passes`` over every task, already run) when given."""
        n = self.options.attention_samples
        tasks = self.context.tasks
        per_task = {}
        for j, texts, sums, counts, _ in passes if passes is not None else self._task_passes(model, len(tasks) - 1):
            if texts:
                per_task[tasks[j].name] = {k: [round(v, 6) for v in (sums[k] / counts[k]).tolist()] for k in sums}
        banks = self.banks_of(model)
        num_loras = next(iter(banks.values())).num_loras
        mean = {name: [round(sum(per_task[t][name][i] for t in per_task) / len(per_task), 6)
                       for i in range(num_loras + 1)] for name in banks} if per_task else {}
        return {
            "description": "mean AM-LoRA selector weight g_i per adapted layer (rows) and LoRA (columns, 0 = the "
                           "zero LoRA, i = the LoRA trained on task i) on test inputs, padding tokens masked out",
            "loras": ["zero"] + [t.name for t in tasks[:num_loras]],
            "samples_per_task": n,
            "tasks": list(per_task),
            "mean": mean,
            "per_task": per_task,
        }

    # ---- routing accuracy over the stream (eval/routing.py) ------------------------------------------------------
    @torch.no_grad()
    def record_routing(self, model, last_task: int) -> dict:
        """Per input of tasks 0..last_task (up to ``attention_samples`` test inputs each): g_0..n averaged over the
        input's tokens (padding masked out) and over the banks of a group ("all", or one projection such as
        "v_proj"), then summarised against the input's own LoRA (index j + 1; 0 is the zero LoRA)."""
        from ..eval.routing import routing_summary

        tasks = self.context.tasks
        passes = list(self._task_passes(model, last_task))
        if last_task == len(tasks) - 1:  # the model on_run_end records: Figure 4 from the same forwards
            self._final_attention = self.record_attention(model, passes)
        banks = list(self.banks_of(model))
        groups = {"all": banks}
        for name in banks:
            groups.setdefault(re.sub(r"\W", "_", name.rpartition(".")[2]), []).append(name)
        index = {name: k for k, name in enumerate(banks)}
        summary = {}
        for j, texts, _, _, per_input in passes:
            if texts:
                vectors = torch.stack([torch.cat(per_input[k]) for k in banks])  # [banks, inputs, n+1]
                summary[tasks[j].name] = {group: routing_summary(vectors[[index[k] for k in names]].mean(0), j + 1)
                                          for group, names in groups.items()}
        return {"after": tasks[last_task].name, "tasks": summary}

    def after_task(self, model, task_index, task, examples):
        if self.options.attention_samples and self.context is not None:
            self.routing_history = [*self.routing_history[:task_index], self.record_routing(model, task_index)]

    def extra_state(self):
        return {}, {"routing": self.routing_history}

    def load_extra_state(self, tensors, meta):
        self.routing_history = list(meta.get("routing", []))

    def on_run_end(self, model):
        if self.options.attention_samples == 0 or self.context is None:
            return
        from ..io_utils import atomic_write_json

        record = self._final_attention or self.record_attention(model)  # recomputed after a resume
        if not record["mean"]:
            return
        if self.routing_history:
            record["routing"] = {
                "description": "per test input: the selector weights g_0..n averaged over its tokens and the "
                               "group's layers; share/margin/top1 of its own task's LoRA (eval/routing.py), after "
                               "each task of the stream",
                "blocks": "0 = the zero LoRA, j + 1 = the LoRA of task j",
                "groups": list(next(iter(self.routing_history[-1]["tasks"].values()))),
                "samples_per_task": self.options.attention_samples,
                "after_task": self.routing_history,
            }
        run_dir = self.context.run_dir
        atomic_write_json(run_dir / ATTENTION_JSON, record)
        for projection, rows in group_by_projection(record["mean"]).items():
            path = run_dir / f"amlora_attention_{projection}_heatmap.png"
            plot_attention_heatmap(rows, record["loras"], projection, path)
        from ..eval.figures import plot_routing

        plot_routing(record, run_dir / ROUTING_PNG)


def _mean_over_tokens(dist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, S, K] -> [B, K]: the mean over each input's non-padding positions (a decoder's own positions: all)."""
    if dist.shape[:-1] == mask.shape:
        m = mask.to(dist.dtype).unsqueeze(-1)
        return (dist * m).sum(1) / m.sum(1).clamp_min(1.0)
    return dist.flatten(1, -2).mean(1)


def group_by_projection(mean: dict[str, list[float]]) -> dict[str, dict[str, list[float]]]:
    """{"model.layers.0.self_attn.q_proj": w} -> {"q_proj": {"layers.0.self_attn": w}} (common prefix dropped)."""
    groups: dict[str, dict[str, list[float]]] = {}
    for name, weights in mean.items():
        prefix, _, projection = name.rpartition(".")
        groups.setdefault(re.sub(r"\W", "_", projection), {})[prefix] = weights
    for projection, rows in groups.items():
        groups[projection] = dict(zip(_shortest_distinct(list(rows)), rows.values()))
    return groups


def _shortest_distinct(names: list[str]) -> list[str]:
    """Dotted names without the parts every name shares at the start and at the end ("model.layers.3.self_attn" ->
    "3")."""
    if len(names) < 2:
        return names
    parts = [n.split(".") for n in names]
    shortest = min(len(p) for p in parts)
    head = next((i for i in range(shortest) if len({p[i] for p in parts}) > 1), shortest)
    tail = next((i for i in range(shortest - head) if len({p[-1 - i] for p in parts}) > 1), shortest - head)
    short = [".".join(p[head:len(p) - tail]) for p in parts]
    return short if all(short) and len(set(short)) == len(short) else names


def plot_attention_heatmap(rows: dict[str, list[float]], loras: list[str], projection: str, path) -> None:
    """Layers x LoRAs heatmap of the mean selector weights, written atomically as PNG."""
    import io

    import numpy
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..io_utils import atomic_write_bytes

    values = torch.tensor(list(rows.values())).numpy()
    height = 1.5 + 0.28 * len(rows)
    figure = Figure(figsize=(2.5 + 0.6 * len(loras), height))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    low, high = float(values.min()), float(values.max())
    image = axes.imshow(values, aspect="auto", cmap="viridis", vmin=low, vmax=max(high, low + 1e-6))
    if values.size <= 120:  # small grids: print the weights in the cells
        for (row, column), value in numpy.ndenumerate(values):
            axes.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=6,
                      color="white" if value < (low + high) / 2 else "black")
    axes.set_xticks(range(len(loras)), [f"{i}: {name}" for i, name in enumerate(loras)], rotation=45, ha="right",
                    fontsize=7)
    axes.set_yticks(range(len(rows)), list(rows), fontsize=6)
    axes.set_xlabel("LoRA (0 = zero LoRA)")
    axes.set_ylabel("layer")
    axes.set_title(f"AM-LoRA mean selector weights: {projection}", fontsize=9)
    figure.colorbar(image, ax=axes, label="mean selector weight g_i")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(path, buffer.getvalue())
