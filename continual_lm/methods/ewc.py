"""EWC (Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting in neural networks"), as a plugin.

It regularises whatever the base method trains: every backbone weight with ``seqft+ewc``, the LoRA with
``seqlora+ewc``. After task t, with the model in eval mode (no dropout), the diagonal Fisher of the trainable
parameters is estimated from ``fisher_samples`` training samples of task t, one sample at a time:

    F_t = mean_n ( d/dtheta log p(y_n | x_n) )^2        log p(y|x) = sum of the target tokens' log-probabilities

and accumulated online (Schwarz et al. 2018; gamma = 1 is the plain sum over tasks):

    F <- gamma * F + F_t,      theta* <- theta after task t

Training a later task adds  lam / 2 * sum_k F_k (theta_k - theta*_k)^2. F and theta* are checkpointed
(safetensors) so a resumed run continues with the same penalty. See docs/methods/ewc.md.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..models.lm_forward import batch_forward, evaluating
from .option_checks import check_fields
from .base import Method, TrainExample


@dataclass
class EWCOptions:
    lam: float = 1000.0  # lambda: weight of the penalty
    fisher_samples: int = 64  # training samples of the finished task used for its Fisher (all if fewer)
    gamma: float = 1.0  # decay of the earlier tasks' Fisher in the online accumulation

    def validate(self):
        check_fields("ewc", self, lam="a number >= 0", fisher_samples="an integer >= 1", gamma="a number in [0, 1]")


class EWC(Method):
    name = "ewc"
    description = "plugin: elastic weight consolidation (diagonal Fisher penalty) on the trainable parameters"
    Options = EWCOptions
    is_plugin = True
    uses_task_id_at_train = True  # a Fisher estimate and anchor after each task
    uses_task_id_at_test = False
    uses_replay = False  # only the Fisher estimates and the anchor weights are kept
    uses_pseudo_samples = False

    def __init__(self, config, options=None):
        super().__init__(config, options)
        self.fisher: dict[str, torch.Tensor] = {}  # parameter name -> accumulated diagonal Fisher
        self.anchor: dict[str, torch.Tensor] = {}  # parameter name -> theta* (the weights after the last task)

    # ---- the penalty -----------------------------------------------------------------------------------------
    def penalty(self, model) -> torch.Tensor | None:
        """lam / 2 * sum_k F_k (theta_k - theta*_k)^2 over the trainable parameters that have a Fisher."""
        terms = [(self.fisher[name] * (param - self.anchor[name]) ** 2).sum()
                 for name, param in model.named_parameters() if param.requires_grad and name in self.fisher]
        return self.options.lam / 2 * torch.stack(terms).sum() if terms else None

    def extra_loss(self, model, batch, outputs):
        return self.penalty(model) if self.fisher and self.options.lam else None

    # ---- the Fisher ------------------------------------------------------------------------------------------
    @staticmethod
    def target_log_likelihood(model, batch) -> torch.Tensor:
        """log p(target | prompt) of a one-sample batch: minus the mean token loss times the target length."""
        outputs = batch_forward(model, batch)
        num_target_tokens = (batch["labels"] != -100).sum()
        return -outputs.loss * num_target_tokens

    def fisher_samples(self, task_index: int) -> list[TrainExample]:
        own = self.tasks[task_index].train
        size = min(self.options.fisher_samples, len(own))
        chosen = sorted(random.Random(self.config.seed * 7_368_787 + task_index).sample(range(len(own)), size))
        return [TrainExample(task_index, own[i]) for i in chosen]

    def after_task(self, model, task_index, task, examples):
        params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        fisher = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
        samples = self.fisher_samples(task_index)
        with evaluating(model):
            for batch in self.context.train_batches(samples, batch_size=1):
                model.zero_grad(set_to_none=True)
                self.target_log_likelihood(model, batch).backward()
                for name, p in params.items():
                    if p.grad is not None:
                        fisher[name] += p.grad.detach().float() ** 2
            model.zero_grad(set_to_none=True)
        for name, p in params.items():
            new = fisher[name] / len(samples)
            self.fisher[name] = self.options.gamma * self.fisher[name] + new if name in self.fisher else new
            self.anchor[name] = p.detach().clone()

    # ---- state -----------------------------------------------------------------------------------------------
    def extra_state(self):
        tensors = {f"fisher.{n}": f for n, f in self.fisher.items()}
        tensors.update({f"anchor.{n}": a for n, a in self.anchor.items()})
        return tensors, {"parameters": sorted(self.fisher)}

    def load_extra_state(self, tensors, meta):
        self.fisher = {n: tensors[f"fisher.{n}"] for n in meta.get("parameters", [])}
        self.anchor = {n: tensors[f"anchor.{n}"] for n in meta.get("parameters", [])}
        if self.context is not None:
            self.fisher = {n: t.to(self.context.device) for n, t in self.fisher.items()}
            self.anchor = {n: t.to(self.context.device) for n, t in self.anchor.items()}
