"""L2P: Learning to Prompt for continual learning (Wang et al., CVPR 2022, arXiv:2112.08654), on a causal or seq2seq LM.

A pool of ``pool_size`` soft prompts P_1..P_M (``prompt_length`` tokens each, initialised from sampled vocabulary
embeddings) with one key k_i each. For an input x the *frozen* backbone gives a query q(x):

    embedding   mean of the input's token embeddings (padding and, in causal training, the answer excluded)
    hidden      mean of the last hidden states of the frozen backbone run on x without prompt (the encoder's for
                seq2seq models): the paper's q(x) = f(x)[0] is this kind of feature, at one extra forward per batch

The top-k keys by cosine similarity select the prompts; they are concatenated in order of decreasing similarity
(as the reference code's ``topk``) and prepended to the input embeddings: [P_s1; ...; P_sk; x]. The loss is

    L = L_task([P_s1; ...; P_sk; x]) + lambda * sum_i (1 - cos(q(x), k_si))       (batch mean)

Prompts receive gradients through the task loss only, keys through the surrogate term only (the selection itself
is not differentiable); the whole pool and every key stay trainable for the whole stream, the backbone is frozen.
No task id is used at train or test time (the same selection runs in ``generate``). See docs/methods/l2p.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.collate import IGNORE_INDEX
from ..errors import ContinualLMError
from ..eval.report import plot_fraction_heatmap
from ..io_utils import atomic_write_json
from ..models.prompt_bank import PromptBank, prompt_forward, prompt_generate
from .option_checks import check_choice, check_fields
from .base import Method

QUERY_MODES = ("embedding", "hidden")
SELECTION_JSON = "l2p_selection.json"


@dataclass
class L2POptions:
    pool_size: int = 10  # prompts in the pool (paper: M = 10)
    top_k: int = 5  # prompts selected per input (paper: N = 5)
    prompt_length: int = 5  # tokens per prompt (paper: L_p = 5); an input gets top_k * prompt_length tokens
    key_loss_weight: float = 0.5  # lambda of the surrogate (key-matching) loss
    query: str = "embedding"  # embedding: mean input token embedding; hidden: mean last hidden state (frozen)

    def validate(self) -> None:
        check_choice("l2p", self, "query", QUERY_MODES)
        check_fields("l2p", self, pool_size="an integer >= 1", top_k="an integer >= 1", prompt_length="an integer >= 1",
                     key_loss_weight="a number >= 0")
        if self.top_k > self.pool_size:
            raise ContinualLMError(f"--l2p-top-k: expected at most --l2p-pool-size ({self.pool_size}), "
                                   f"got {self.top_k}")


class PromptPool(nn.Module):
    """The prompts (a PromptBank) and one key per prompt; ``select`` is the top-k cosine matching."""

    def __init__(self, embedding: nn.Embedding, size: int, length: int):
        super().__init__()
        self.bank = PromptBank(embedding, length)
        for _ in range(size):
            self.bank.add_prompt()
        weight = embedding.weight
        self.keys = nn.Parameter(torch.empty(size, weight.shape[1], device=weight.device).uniform_(-1, 1))

    def similarity(self, query: torch.Tensor) -> torch.Tensor:
        """cos(q_b, k_i) -> [B, M]; differentiable in the keys only (the query is frozen)."""
        return F.normalize(query.detach().float(), dim=-1) @ F.normalize(self.keys.float(), dim=-1).T

    def select(self, query: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices [B, k] in order of decreasing similarity, their cosines [B, k])."""
        cosines, indices = self.similarity(query).topk(top_k, dim=-1)
        return indices, cosines


class L2P(Method):
    name = "l2p"
    soft_prompt_tuning = True
    description = "Learning to Prompt: a key-matched pool of soft prompts, top-k selected per input (no task id)"
    Options = L2POptions
    uses_task_id_at_test = False
    pet_kind = "prompt"
    differs_from_paper = ("query: the mean input embedding by default; the paper's frozen pre-trained feature is "
                          "--l2p-query hidden (set by --preset paper)")
    supports_corpus_tasks = False  # the knowledge is in prompts outside the model body an end task fine-tunes

    def setup(self, model, backbone):
        self.is_seq2seq = backbone.is_seq2seq
        self.embedding = model.get_input_embeddings()
        model.requires_grad_(False)
        self.pool = PromptPool(self.embedding, self.options.pool_size, self.options.prompt_length)
        model.add_module("l2p", self.pool)  # prompts and keys are checkpointed with the model's parameters
        self._surrogate: torch.Tensor | None = None

    # ---- the query (frozen backbone) -------------------------------------------------------------------------
    @torch.no_grad()
    def query(self, model, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """q(x) [B, H]: the mean over the positions in ``mask`` of the token embeddings or last hidden states."""
        if self.options.query == "hidden":
            was_training = model.training
            model.eval()  # the frozen pre-trained feature: no dropout, also while training
            if self.is_seq2seq:
                states = model.get_encoder()(input_ids=input_ids, attention_mask=mask.long()).last_hidden_state
            else:
                states = model(input_ids=input_ids, attention_mask=mask.long(),
                               output_hidden_states=True).hidden_states[-1]
            model.train(was_training)
        else:
            states = self.embedding(input_ids)
        weights = mask.unsqueeze(-1).to(states.dtype)
        return ((states * weights).sum(1) / weights.sum(1).clamp_min(1)).float()

    def selection(self, model, input_ids, mask) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pool.select(self.query(model, input_ids, mask), self.options.top_k)

    # ---- training --------------------------------------------------------------------------------------------
    def forward(self, model, batch):
        mask = batch["attention_mask"].bool()
        if not self.is_seq2seq:
            mask = mask & (batch["labels"] == IGNORE_INDEX)  # the query sees the input only, as at test time
        indices, cosines = self.selection(model, batch["input_ids"], mask)
        self._surrogate = self.options.key_loss_weight * (1 - cosines).sum(-1).mean()
        return prompt_forward(model, batch, self.pool.bank.gather(indices))

    def extra_loss(self, model, batch, outputs):
        surrogate, self._surrogate = self._surrogate, None
        return surrogate

    # ---- evaluation ------------------------------------------------------------------------------------------
    def generate(self, model, batch, max_new_tokens, **generate_kwargs):
        # Only input_ids/attention_mask are read: the prompts are chosen by key matching, never by a task id.
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        indices, _ = self.selection(model, input_ids, attention_mask.bool())
        return prompt_generate(model, input_ids, attention_mask, self.pool.bank.gather(indices),
                               max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, **generate_kwargs)

    # ---- insight: which prompts each task's test inputs select (paper Figure 5) ------------------------------
    @torch.no_grad()
    def selection_frequency(self, model, task_index: int) -> list[float]:
        """Fraction of task ``task_index``'s test inputs whose top-k contains each pool prompt."""
        counts = torch.zeros(self.options.pool_size)
        texts = [e.input for e in self.tasks[task_index].test]
        for batch in self.context.prompt_batches(task_index, texts):
            indices, _ = self.selection(model, batch["input_ids"], batch["attention_mask"].bool())
            counts += torch.bincount(indices.flatten().cpu(), minlength=self.options.pool_size).float()
        return (counts / max(1, len(texts))).tolist()

    def on_run_end(self, model):
        if self.context is None or self.context.run_dir is None:
            return
        was_training = model.training
        model.eval()
        matrix = [self.selection_frequency(model, j) for j in range(len(self.tasks))]
        model.train(was_training)
        names = [t.name for t in self.tasks]
        path = self.context.run_dir
        atomic_write_json(path / SELECTION_JSON, {"tasks": names, "frequency": matrix})
        plot_fraction_heatmap(matrix, path / "l2p_selection_heatmap.png", rows=names,
                              columns=[str(i + 1) for i in range(len(matrix[0]) if matrix else 0)],
                              xlabel="pool prompt", ylabel="test inputs of task",
                              title=f"L2P prompt selection after the last task (fraction of inputs with the prompt "
                                    f"in their top-{self.options.top_k})")


