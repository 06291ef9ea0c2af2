"""EPI: a soft prompt per task, selected at test time by the Mahalanobis distance of the input's frozen-backbone
representation to each task's stored statistics (Wang et al., ACL 2023, "Rehearsal-free Continual Language Learning
via Efficient Parameter Isolation"; reference code Dicer-Zz/EPI, ``model/epi.py``, ``trainers/epi.py``).

Train    task t trains a new prompt (PromptBank, ``--epi-prompt-length`` tokens); earlier prompts and the backbone are
         frozen. (The reference uses prefixes, i.e. deep prompts in every layer; here: input prompts.)
Stats    after task t, the frozen backbone (no prompt) encodes task t's training prompts; the representation is the
         mean-pooled last hidden state (``rep_mode avg``: decoder-only: the final hidden states over the prompt tokens;
         seq2seq: the encoder's). Stored per task: one mean per class (classification; one mean for a generation
         task) and the mean of the class covariances. No raw sample is kept.
Select   shared covariance S = mean of the tasks' covariances (ridge-shrunk by ``--epi-shrinkage``), P = pinv(S);
         task(x) = argmin_t min_c (x - mu_tc)^T P (x - mu_tc); the chosen task's prompt answers. No task id is used.
Insight  after the run, the task-identification accuracy on every task's test inputs (and the confusion matrix) goes
         to ``epi_task_identification.json`` and ``epi_task_identification_heatmap.png`` in the run directory.
See docs/methods/epi.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..eval.report import plot_fraction_heatmap
from ..io_utils import atomic_write_json
from ..models.prompt_bank import PromptBank, prompt_forward, prompt_generate
from .option_checks import check_fields
from .base import Method

TASK_ID_JSON = "epi_task_identification.json"


@dataclass
class EPIOptions:
    prompt_length: int = 10  # soft-prompt tokens per task (the reference's prefix length: 16)
    shrinkage: float = 0.1  # S <- (1 - a) S + a (tr S / H) I before inversion; 0 = the reference's plain pinv

    def validate(self) -> None:
        check_fields("epi", self, prompt_length="an integer >= 1", shrinkage="a number in [0, 1]")


class MahalanobisSelector:
    """Per-task class means and covariances; picks the task with the smallest Mahalanobis distance."""

    def __init__(self, shrinkage: float = 0.0):
        self.shrinkage = shrinkage
        self.means: list[torch.Tensor] = []  # per task [classes, H], float32 on CPU
        self.covariances: list[torch.Tensor] = []  # per task [H, H]: the mean of its class covariances
        self._precision: torch.Tensor | None = None

    @property
    def num_tasks(self) -> int:
        return len(self.means)

    def add_task(self, features: torch.Tensor, classes: list | None = None) -> None:
        """Statistics of one task from its representations [N, H] and each row's class (None: one class)."""
        x = features.detach().double().cpu()
        if classes is None:
            groups = [x]
        else:
            if len(classes) != len(x):
                raise ValueError(f"{len(classes)} class labels for {len(x)} representations")
            groups = [x[[k for k, c in enumerate(classes) if c == label]] for label in sorted(set(classes), key=str)]
        means = torch.stack([g.mean(0) for g in groups])
        covariances = [torch.cov(g.T, correction=1).reshape(x.shape[1], x.shape[1]) for g in groups if len(g) > 1]
        covariance = torch.stack(covariances).mean(0) if covariances else torch.zeros(x.shape[1], x.shape[1],
                                                                                       dtype=x.dtype)
        self.means.append(means.float())  # stored in float32 so that a reloaded state selects identically
        self.covariances.append(covariance.float())
        self._precision = None

    def precision(self) -> torch.Tensor:
        """pinv of the shrunk shared covariance (float64)."""
        if self._precision is None:
            shared = torch.stack(self.covariances).double().mean(0)
            hidden = shared.shape[0]
            scale = (shared.trace() / hidden).item() or 1.0
            shrunk = (1 - self.shrinkage) * shared + self.shrinkage * scale * torch.eye(hidden, dtype=shared.dtype)
            self._precision = torch.linalg.pinv(shrunk, hermitian=True)
        return self._precision

    def distances(self, features: torch.Tensor) -> torch.Tensor:
        """[B, T]: for each task, the smallest squared Mahalanobis distance to one of its class means."""
        if not self.means:
            raise RuntimeError("EPI: no task statistics yet")
        x = features.detach().double()
        precision = self.precision().to(x.device)
        columns = []
        for means in self.means:
            diff = x[:, None, :] - means.to(x.device, x.dtype)[None]  # [B, C, H]
            columns.append(torch.einsum("bch,hk,bck->bc", diff, precision, diff).min(dim=1).values)
        return torch.stack(columns, dim=1)

    def select(self, features: torch.Tensor) -> torch.Tensor:
        return self.distances(features).argmin(dim=1)

    def state(self) -> dict[str, torch.Tensor]:
        tensors = {f"means.{t}": m for t, m in enumerate(self.means)}
        tensors.update({f"covariances.{t}": c for t, c in enumerate(self.covariances)})
        return tensors

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        count = sum(1 for name in tensors if name.startswith("means."))
        self.means = [tensors[f"means.{t}"].float().cpu() for t in range(count)]
        self.covariances = [tensors[f"covariances.{t}"].float().cpu() for t in range(count)]
        self._precision = None


def mean_pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return ((hidden * mask).sum(1) / mask.sum(1).clamp_min(1)).float()


class EPI(Method):
    name = "epi"
    soft_prompt_tuning = True
    uses_task_id_at_train = True  # a new prompt per task; training batches pick it by task id
    pet_kind = "prompt"
    differs_from_paper = "input prompts instead of the reference code's deep prefixes (every layer)"
    description = "a prompt per task, chosen at test time by Mahalanobis distance of frozen-backbone features"
    Options = EPIOptions
    uses_task_id_at_test = False

    # ---- structure ---------------------------------------------------------------------------------------------
    def setup(self, model, backbone):
        self.is_seq2seq = backbone.is_seq2seq
        model.requires_grad_(False)
        self.bank = PromptBank(model.get_input_embeddings(), self.options.prompt_length)
        model.add_module("epi_prompts", self.bank)
        self.selector = MahalanobisSelector(self.options.shrinkage)

    def before_task(self, model, task_index, task):
        for prompt in self.bank.prompts:
            prompt.requires_grad_(False)
        self.bank.add_prompt()

    # ---- the frozen-backbone representation ----------------------------------------------------------------------
    @torch.no_grad()
    def representation(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean-pooled last hidden states of the frozen backbone without any prompt: [B, H] float32."""
        if self.is_seq2seq:
            hidden = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        else:  # positions from the mask, so a left-padded row is encoded as it would be alone
            positions = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
            hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                      position_ids=positions).last_hidden_state
        return mean_pooled(hidden, attention_mask)

    def representations_of(self, model, task_index: int, texts: list[str]) -> torch.Tensor:
        rows = [self.representation(model, b["input_ids"], b["attention_mask"])
                for b in self.context.prompt_batches(task_index, texts)]
        return torch.cat(rows)

    # ---- training / test ---------------------------------------------------------------------------------------
    def forward(self, model, batch):
        return prompt_forward(model, batch, self.bank.gather(batch["task_ids"]))

    def after_task(self, model, task_index, task, examples):
        was_training = model.training
        model.eval()
        features = self.representations_of(model, task_index, [e.input for e in task.train])
        self.selector.add_task(features, [e.target for e in task.train] if task.labels else None)
        model.train(was_training)

    def select_tasks(self, model, batch) -> torch.Tensor:
        features = self.representation(model, batch["input_ids"], batch["attention_mask"])
        return self.selector.select(features).to(batch["input_ids"].device)

    def generate(self, model, batch, max_new_tokens, **generate_kwargs):
        # Only input_ids/attention_mask are read: the prompt is chosen from the input, never from a task id.
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        prompts = self.bank.gather(self.select_tasks(model, batch))
        return prompt_generate(model, input_ids, attention_mask, prompts, max_new_tokens=max_new_tokens,
                               do_sample=False, num_beams=1, **generate_kwargs)

    # ---- insight: task-identification accuracy -------------------------------------------------------------------
    @torch.no_grad()
    def task_identification(self, model) -> dict:
        """Which prompt each task's test inputs select: accuracy per task, overall, and the confusion matrix."""
        T = self.selector.num_tasks
        names = [t.name for t in self.tasks[:T]]
        confusion, per_task, hits, total = [], {}, 0, 0
        for j in range(T):
            texts = [e.input for e in self.tasks[j].test]
            chosen = torch.cat([self.select_tasks(model, b) for b in self.context.prompt_batches(j, texts)]) \
                if texts else torch.zeros(0, dtype=torch.long)
            counts = torch.bincount(chosen.cpu(), minlength=T).tolist()
            confusion.append([c / max(1, len(texts)) for c in counts])
            per_task[names[j]] = round(100 * counts[j] / len(texts), 4) if texts else None
            hits, total = hits + counts[j], total + len(texts)
        return {"tasks": names, "accuracy": round(100 * hits / total, 4) if total else None,
                "accuracy_per_task": per_task, "confusion": confusion}

    def on_run_end(self, model):
        if self.context is None or self.context.run_dir is None or not self.selector.num_tasks:
            return
        was_training = model.training
        model.eval()
        result = self.task_identification(model)
        model.train(was_training)
        path = self.context.run_dir
        atomic_write_json(path / TASK_ID_JSON, result)
        plot_fraction_heatmap(result["confusion"], path / "epi_task_identification_heatmap.png", rows=result["tasks"],
                              columns=result["tasks"], xlabel="chosen task (prompt)", ylabel="test inputs of task",
                              title=f"EPI task identification on the test inputs (accuracy {result['accuracy']:.1f}%)")

    # ---- state -------------------------------------------------------------------------------------------------
    def extra_state(self):
        return self.selector.state(), {"tasks_with_statistics": self.selector.num_tasks}

    def load_extra_state(self, tensors, meta):
        self.selector.load(tensors)
