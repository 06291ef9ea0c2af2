"""MIGU (Du et al., 2024, "Unlocking Continual Learning Abilities in Language Models"): magnitude-based gradient
updating, a plugin composable with seqft, seqlora, inclora, olora and replay ("seqlora+replay+migu").

For a linear layer with rows w_1..w_dout and input token x, the output magnitudes |w_k . x| are L1-normalised over
the units k and averaged over the batch's non-padding tokens. After the backward, the floor(T * d_out) units of
smallest magnitude get a zero gradient (weight rows and bias), so only the large-magnitude rows are updated.

Statistics come from forward hooks on the normal training forward (no extra pass); the state is one d_out vector
per layer, reset after every optimiser step. Which units mean what (docs/methods/migu.md):

* full fine-tuning: every nn.Linear inside the transformer blocks; unit k = output k = row k of W (and bias k);
* LoRA banks (seqlora, inclora, olora): rows of a trainable A_i are ranked by the normalised |A_i x| (r units,
  computed from the bank input without dropout), rows of a trainable B_i by the bank's output, i.e. the adapted
  layer's output W0 x + B A x (d_out units), as the paper and its reference code (``activation_combined``) do.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from ..data.collate import IGNORE_INDEX
from ..errors import ContinualLMError
from ..models.inject import _matches, find_lora_banks
from ..models.lora_bank import LoRABank
from .option_checks import check_fields
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
    """Indices of the floor(T * d) smallest entries of a magnitude vector (the units that are not updated)."""
    k = units_to_mask(threshold, magnitude.numel())
    return torch.topk(magnitude, k, largest=False, sorted=False).indices


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
        chosen = [n for n in names if any(_matches(n, p) for p in patterns)]
        if not chosen:
            suffixes = sorted({n.rsplit(".", 1)[-1] for n in names})
            raise ContinualLMError(f"--migu-modules {','.join(patterns)} matched none of the block linear layers; "
                                   f"expected name suffixes such as {', '.join(suffixes)} (or re:REGEX)")
        names = chosen
    modules = dict(model.named_modules())
    return {name: modules[name] for name in names}


class MagnitudeStats:
    """Forward hooks that sum, per target module, the L1-normalised output magnitudes over non-padding tokens.

    ``set_batch(batch)`` gives the token masks; ``output[name]`` is the summed distribution over d_out units
    and, for LoRA banks, ``lora_a[f"{name}#{i}"]`` the one over the r units of A_i x for each LoRA i being
    trained. Only the ranking matters, so sums are kept (no division by the token count). Hooks run only in
    training mode unless ``always=True`` (the overlap analysis runs the model in eval mode).
    """

    def __init__(self, model: nn.Module, targets: dict[str, nn.Module], always: bool = False):
        self.always = always
        self.output: dict[str, torch.Tensor] = {}
        self.lora_a: dict[str, torch.Tensor] = {}
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
        self.lora_a.clear()

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
                self._add(self.output, name, self._normalised_sum(output.detach(), weights))
                if isinstance(module, LoRABank):
                    trained = [i for i, A in enumerate(module.lora_A) if A.requires_grad]
                    if trained:  # |A_i x| of the LoRAs being trained, each normalised over its r units
                        A = torch.cat([module.lora_A[i] for i in trained])
                        xa = nn.functional.linear(inputs[0].detach().to(A.dtype), A)
                        xa = xa.unflatten(-1, (len(trained), module.r))
                        for j, i in enumerate(trained):
                            self._add(self.lora_a, f"{name}#{i}", self._normalised_sum(xa[..., j, :], weights))
        return hook

    @staticmethod
    def _add(store: dict[str, torch.Tensor], name: str, value: torch.Tensor) -> None:
        if name in store and store[name].shape == value.shape:
            store[name] += value
        else:
            store[name] = value


@dataclass
class MIGUOptions:
    threshold: float | None = None  # None: the paper's value for the composition (0.7 / 0.4 replay / 0.1 olora)
    modules: list[str] | None = None  # name suffixes or re:REGEX; None: every linear layer of the blocks

    def validate(self) -> None:
        if self.modules is not None:  # "q_proj,v_proj" (one CLI value) or a list
            items = [self.modules] if isinstance(self.modules, str) else list(self.modules)
            self.modules = [m for item in items for m in str(item).split(",") if m]
        check_fields("migu", self, threshold="a number in [0, 1) or None")


def _zero_rows(param: nn.Parameter | None, rows: torch.Tensor) -> None:
    if param is not None and param.grad is not None:
        param.grad.index_fill_(0, rows.to(param.grad.device), 0)


class MIGU(Method):
    name = "migu"
    description = "plugin: update only the rows whose linear outputs have large magnitudes (gradient mask)"
    Options = MIGUOptions
    is_plugin = True

    @property
    def threshold(self) -> float:
        given = self.options.threshold
        return float(given) if given is not None else default_threshold(self.config.method)

    def setup(self, model, backbone):
        self.targets = select_targets(model, self.options.modules)
        self.stats = MagnitudeStats(model, self.targets)

    def before_forward(self, model, batch):
        self.stats.set_batch(batch)

    def after_backward(self, model):
        self._all_reduce()
        threshold = self.threshold
        for name, module in self.targets.items():
            if name not in self.stats.output:
                continue
            rows = smallest_units(self.stats.output[name], threshold)
            if isinstance(module, LoRABank):
                for i, (A, B) in enumerate(zip(module.lora_A, module.lora_B)):
                    _zero_rows(B, rows)  # frozen LoRAs have no gradient and are left alone
                    if f"{name}#{i}" in self.stats.lora_a:
                        _zero_rows(A, smallest_units(self.stats.lora_a[f"{name}#{i}"], threshold))
            else:
                _zero_rows(module.weight, rows)
                _zero_rows(module.bias, rows)
        self.stats.reset()

    def _all_reduce(self) -> None:
        """Under data parallelism every process must mask the same rows: sum the statistics over processes."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        tensors = list(self.stats.output.values()) + list(self.stats.lora_a.values())
        if tensors:
            flat = torch.cat([t.reshape(-1) for t in tensors])
            torch.distributed.all_reduce(flat)
            for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
                t.copy_(part.view_as(t))
