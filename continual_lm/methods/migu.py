"""MIGU (Du et al., 2024, "Unlocking Continual Learning Abilities in Language Models"): magnitude-based gradient
updating, a plugin composable with seqft, seqlora, inclora, olora, amlora and replay ("seqlora+replay+migu").

For a linear layer with rows w_1..w_dout and input token x, the output magnitudes |w_k . x| are L1-normalised over
the units k and averaged over the batch's non-padding tokens (paper §3.1). After the backward, the floor(T * d_out)
units of smallest magnitude are masked, so that only the large-magnitude rows are updated: W <- W - lr (M * grad W).

Which statistic ranks which rows (docs/methods/migu.md):

* full fine-tuning: every nn.Linear inside the transformer blocks; row k of W (and bias k) by its output |W x|_k;
* LoRA banks (seqlora, inclora, olora, amlora, ...): for each LoRA i being trained, the rows of A_i by x_A = A_i x (r
  units; only if A_i trains: InfLoRA/GainLoRA freeze it) and the rows of B_i by B_i's own output x_B = B_i A_i x
  (d_out units), both from the bank input without dropout. Paper §3.2: B uses "the output of x_B ... rather than
  the output of h" (h = W0 x + s x_B), as does the reference code's default (activation_combined=False).
  Each trained LoRA is ranked by its own x_B.
* ties: a statistic whose units all tie cannot rank anything, so nothing is masked. This is the B = 0 rule: a new
  LoRA's B is zero, x_B = 0 for every token, and B updates all its rows in its first step (the reference's
  ``activation >= quantile`` keeps every tied unit too).

Two ways to mask (``--migu-mask``):

* ``update`` (default, the paper's rule): the masked rows take no part in the optimizer step. Their gradient rows
  are zeroed (clipping sees M * grad), and after the step (``after_optimizer_step``) the masked rows of the parameter
  and of every optimizer state tensor of its shape (AdamW's exp_avg, exp_avg_sq) are written back, so a masked
  row neither moves nor has its moments changed, whatever the torch optimizer.
* ``gradient``: only the gradient rows are zeroed (the behaviour before issue 17). AdamW's moments still move the
  masked rows (bench/migu_update_mask.md measures how many).

Statistics come from forward hooks on the normal training forward (no extra pass); the state is one vector per
ranked matrix, reset after every optimizer step; under data parallelism it is summed over processes.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ..data.collate import IGNORE_INDEX
from ..errors import ContinualLMError
from ..models.inject import find_lora_banks, matches_target
from ..models.lora_bank import LoRABank
from .option_checks import check_choice, check_fields, none_means
from .base import Method

# decoder modules that read encoder tokens (cross-attention keys/values of T5 / BART-like models)
_CROSS_ATTENTION_KV = re.compile(r".*(EncDecAttention\.[kv]|encoder_attn\.[kv]_proj|crossattention\..*\.(key|value))$")


def default_threshold(method_spec: str) -> float:
    """The paper's recommended T for a composition: 0.1 with O-LoRA as base, 0.4 with replay, else 0.7."""
    parts = [p.strip() for p in method_spec.split("+")]
    if parts[0] == "olora":
        return 0.1
    if "replay" in parts:
        return 0.4
    return 0.7


def units_to_mask(threshold: float, units: int) -> int:
    return math.floor(threshold * units + 1e-9)  # floor(0.7 * 10) is 7, not 6 (0.7 * 10 = 6.999...)


def smallest_units(magnitude: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices of the floor(T * d) smallest entries of a magnitude vector (the units that are not updated).

    Ties are broken by unit index (a stable sort), so that every process, and a one-process run, pick the same
    rows: exact ties are common, e.g. after a LoRA's first AdamW step B's entries are all +-lr, and rows of B with
    the same sign pattern have equal |x_B|. When all entries tie nothing can be ranked and none is masked (a new
    LoRA's B = 0 gives x_B = 0 for every token)."""
    k = units_to_mask(threshold, magnitude.numel())
    if k == 0 or bool(magnitude.max() == magnitude.min()):
        return magnitude.new_zeros(0, dtype=torch.long)
    return torch.sort(magnitude, stable=True).indices[:k]


def default_target_names(model: nn.Module) -> list[str]:
    """Every nn.Linear (or LoRA bank, if the model has banks) inside the numbered transformer blocks."""
    banks = find_lora_banks(model)
    if banks:
        return list(banks)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and m is not head and re.search(r"\.\d+\.", f".{name}.")]


def select_targets(model: nn.Module, patterns: list[str] | None) -> dict[str, nn.Module]:
    names = default_target_names(model)
    if patterns:
        chosen = [n for n in names if any(matches_target(n, p) for p in patterns)]
        if not chosen:
            suffixes = sorted({n.rsplit(".", 1)[-1] for n in names})
            raise ContinualLMError(f"--migu-modules {','.join(patterns)} matched none of the block linear layers; "
                                   f"expected name suffixes such as {', '.join(suffixes)} (or re:REGEX)")
        names = chosen
    modules = dict(model.named_modules())
    return {name: modules[name] for name in names}


class MagnitudeStats:
    """Forward hooks that sum, per ranked matrix, the L1-normalised output magnitudes over non-padding tokens.

    ``set_batch(batch)`` gives the token masks. ``output`` is keyed by the matrix whose rows a statistic ranks, and
    each statistic is that matrix's own output: a target linear's name (its output W x, d_out units) or, for a LoRA
    bank and each LoRA i being trained, ``f"{bank}.lora_A.{i}"`` (x_A = A_i x, r units) and ``f"{bank}.lora_B.{i}"``
    (x_B = B_i A_i x, d_out units), the names of those parameters. Only the ranking matters, so sums are kept (no
    division by the token count). Hooks run only in training mode unless ``always=True`` (the overlap analysis runs
    the model in eval mode).
    """

    def __init__(self, model: nn.Module, targets: dict[str, nn.Module], always: bool = False):
        self.always = always
        self.output: dict[str, torch.Tensor] = {}
        self.encoder_mask: torch.Tensor | None = None
        self.decoder_mask: torch.Tensor | None = None
        self.is_seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
        encoder = model.get_encoder() if self.is_seq2seq else None
        encoder_modules = {id(m) for m in encoder.modules()} if encoder is not None else set()
        self.handles = []
        for name, module in targets.items():
            reads_encoder = id(module) in encoder_modules or bool(_CROSS_ATTENTION_KV.fullmatch(name))
            self.handles.append(module.register_forward_hook(self._hook(name, reads_encoder)))

    def set_batch(self, batch: dict[str, torch.Tensor]) -> None:
        """Token masks of a training batch: the attention mask (causal LM: prompt + target; seq2seq: encoder) and,
        for seq2seq decoders, the target tokens (labels != -100)."""
        mask, labels = batch.get("attention_mask"), batch.get("labels")
        self.encoder_mask = mask.float() if mask is not None else None
        self.decoder_mask = (labels != IGNORE_INDEX).float() if labels is not None and self.is_seq2seq else None

    def reset(self) -> None:
        self.output.clear()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _token_weights(self, tokens_shape: torch.Size, reads_encoder: bool, device) -> torch.Tensor:
        mask = self.decoder_mask if self.is_seq2seq and not reads_encoder else self.encoder_mask
        if mask is None or mask.shape != tokens_shape:  # no batch given (or an unexpected layout): every token
            return torch.ones(tokens_shape, device=device)
        return mask.to(device)

    @staticmethod
    def _normalised_sum(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """sum_t weights_t * |values_t| / ||values_t||_1 over the token dimensions, units kept: [..., units]."""
        magnitude = values.abs().float().reshape(-1, values.shape[-1])
        per_token = weights.reshape(-1) / magnitude.sum(-1).clamp_min(1e-12)
        return per_token @ magnitude

    def _hook(self, name: str, reads_encoder: bool):
        def hook(module, inputs, output):
            if not (module.training or self.always):
                return
            with torch.no_grad():
                weights = self._token_weights(output.shape[:-1], reads_encoder, output.device)
                if isinstance(module, LoRABank):
                    self._add_lora_outputs(name, module, inputs[0].detach(), weights)
                else:
                    self._add(name, self._normalised_sum(output.detach(), weights))
        return hook

    def _add_lora_outputs(self, name: str, bank: LoRABank, x: torch.Tensor, weights: torch.Tensor) -> None:
        """x_A = A_i x and x_B = B_i x_A of each LoRA i being trained, from the bank input without dropout. A mixer's
        per-token weight g scales x_B (g B_i A_i x) but not its L1-normalised distribution, so it is left out."""
        # a LoRA trains if either factor does: InfLoRA/GainLoRA freeze a designed A_i and train only B_i
        trained = [i for i, A in enumerate(bank.lora_A) if A.requires_grad or bank.lora_B[i].requires_grad]
        if not trained:
            return
        A = torch.cat([bank.lora_A[i].detach() for i in trained])  # one [tokens, in] x [in, n*r] matmul
        x_a = nn.functional.linear(x.to(A.dtype), A).unflatten(-1, (len(trained), bank.r))
        for j, i in enumerate(trained):
            if bank.lora_A[i].requires_grad:
                self._add(f"{name}.lora_A.{i}", self._normalised_sum(x_a[..., j, :], weights))
            x_b = nn.functional.linear(x_a[..., j, :], bank.lora_B[i].detach())
            self._add(f"{name}.lora_B.{i}", self._normalised_sum(x_b, weights))

    def _add(self, key: str, value: torch.Tensor) -> None:
        if key in self.output and self.output[key].shape == value.shape:
            self.output[key] += value
        else:
            self.output[key] = value


class FrozenRows:
    """Rows of parameters kept exactly as they are through the next optimizer step, together with the same rows of
    every optimizer state tensor of the parameter's shape (AdamW's exp_avg, exp_avg_sq; SGD's momentum buffer): the
    rows take no part in that step. Scalar state (AdamW's per-parameter step count) is shared by all rows and is
    left as the step leaves it.

    Made after the backward: the parameter rows are copied at once; the optimizer state rows are copied by a one-shot
    global step pre-hook (torch.optim's), because the optimizer is not known here and its state only exists, and
    must be read, just before its step. ``restore()``, after the step, writes both back. A state tensor the step
    creates (an optimizer's first step) has no earlier value: its masked rows keep what the step computed from
    their zeroed gradient (zeros for AdamW's moments and SGD's momentum).
    """

    def __init__(self, rows: list[tuple[nn.Parameter, torch.Tensor]]):
        self.rows = rows
        self.saved_params = [p.detach().index_select(0, r) for p, r in rows]
        self.saved_state: list[tuple[dict, str, torch.Tensor, torch.Tensor]] = []
        self.hook = register_optimizer_step_pre_hook(self._save_state)

    def _save_state(self, optimizer, args, kwargs) -> None:
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if not any(id(p) in held for p, _ in self.rows):
            return  # another optimizer's step
        self.hook.remove()
        for p, r in self.rows:
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == p.shape:
                    self.saved_state.append((state, key, r, value.index_select(0, r)))

    @torch.no_grad()
    def restore(self) -> None:
        self.hook.remove()  # the step did not happen (e.g. skipped by a gradient scaler): nothing moved
        for (p, r), saved in zip(self.rows, self.saved_params):
            p.index_copy_(0, r, saved)
        for state, key, r, saved in self.saved_state:
            state[key].index_copy_(0, r, saved)

    def cancel(self) -> None:
        self.hook.remove()


MASK_MODES = ("update", "gradient")


@dataclass
class MIGUOptions:
    threshold: float | None = none_means("the paper's value for the composition: 0.7, 0.4 +replay, 0.1 olora")
    modules: list[str] | None = none_means("every linear layer of the blocks")  # name suffixes or re:REGEX
    mask: str = "update"  # update: masked rows take no part in the optimizer step; gradient: only their gradient is 0

    def validate(self) -> None:
        if self.modules is not None:  # "q_proj,v_proj" (one CLI value) or a list
            items = [self.modules] if isinstance(self.modules, str) else list(self.modules)
            self.modules = [m for item in items for m in str(item).split(",") if m]
        check_fields("migu", self, threshold="a number in [0, 1) or None")
        check_choice("migu", self, "mask", MASK_MODES)


class MIGU(Method):
    name = "migu"
    description = "plugin: update only the rows whose linear outputs have large magnitudes (magnitude-based mask)"
    Options = MIGUOptions
    is_plugin = True
    uses_task_id_at_train = False  # a mask from the current batch's own activations
    uses_task_id_at_test = False
    uses_replay = False
    uses_pseudo_samples = False

    @property
    def threshold(self) -> float:
        given = self.options.threshold
        return float(given) if given is not None else default_threshold(self.config.method)

    def setup(self, model, backbone):
        self.targets = select_targets(model, self.options.modules)
        self.stats = MagnitudeStats(model, self.targets)
        self.frozen: FrozenRows | None = None

    def before_forward(self, model, batch):
        self.stats.set_batch(batch)

    def after_backward(self, model):
        self._all_reduce()
        masked = self.masked_rows()
        self.stats.reset()
        for param, rows in masked:
            param.grad.index_fill_(0, rows, 0)
        if self.frozen is not None:  # made for a step that never came
            self.frozen.cancel()
        self.frozen = FrozenRows(masked) if masked and self.options.mask == "update" else None

    def after_optimizer_step(self, model, optimizer):
        if self.frozen is not None:
            self.frozen.restore()
            self.frozen = None

    def masked_rows(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """(parameter, indices of its masked rows) for every trained matrix with statistics of this step."""
        threshold, stats, masked = self.threshold, self.stats.output, []
        for name, module in self.targets.items():
            if isinstance(module, LoRABank):
                for kind, params in (("lora_A", module.lora_A), ("lora_B", module.lora_B)):
                    for i, param in enumerate(params):
                        if f"{name}.{kind}.{i}" in stats and param.grad is not None:
                            masked.append((param, smallest_units(stats[f"{name}.{kind}.{i}"], threshold)))
            elif name in stats:
                rows = smallest_units(stats[name], threshold)
                masked += [(p, rows) for p in (module.weight, module.bias) if p is not None and p.grad is not None]
        return [(p, rows.to(p.device)) for p, rows in masked if rows.numel()]

    def _all_reduce(self) -> None:
        """Under data parallelism every process must mask the same rows: sum the statistics over processes."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        tensors = list(self.stats.output.values())
        if tensors:
            flat = torch.cat([t.reshape(-1) for t in tensors])
            torch.distributed.all_reduce(flat)
            for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
                t.copy_(part.view_as(t))
