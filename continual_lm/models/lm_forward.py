"""The training forward of a (wrapped) Hugging Face model: the loss over the answer tokens only.

A causal LM's head turns every position's hidden state into vocabulary logits, but a continual-learning example's
loss covers only its few answer tokens (labels -100 elsewhere). ``lm_forward`` asks the model for the logits of the
positions that predict some row's answer token (transformers' ``logits_to_keep`` with those column indices) and
computes the mean token cross-entropy there: the same loss and gradients as ``model(..., labels=labels)``, without
the [batch, length, vocabulary] logits. On SmolLM2-135M (49,152-token vocabulary) this makes a LoRA step 1.2x faster
(``bench/lm_forward.md``).

Seq2seq models (whose decoder logits are the answer's already), masked LMs, models whose ``forward`` has no
``logits_to_keep``, and batches without labels or without any answer token take the model's own forward.

Beside it, what methods ask of the model they are handed (possibly inside a DDP/DeepSpeed wrapper): the model
itself (``unwrapped``), whether it is seq2seq, its input-embedding layer, and ``evaluating(model)``, a context in
which it is in evaluation mode (no dropout), its previous mode restored afterwards.
"""
from __future__ import annotations

import contextlib
import functools
import inspect

import torch
import torch.nn.functional as F
from torch import nn

from ..data.collate import IGNORE_INDEX


def unwrapped(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside a training wrapper (DDP, DeepSpeed engine) of the phase."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model)


def is_seq2seq_model(model: nn.Module) -> bool:
    return bool(getattr(unwrapped(model).config, "is_encoder_decoder", False))


def input_embeddings(model: nn.Module) -> nn.Module:
    """The input-embedding layer of the (wrapped) model: the token embeddings soft prompts are put in front of."""
    return unwrapped(model).get_input_embeddings()


@contextlib.contextmanager
def model_mode(model: nn.Module, training: bool):
    """``with model_mode(model, training=...):`` the model (every submodule) in that mode inside, and afterwards
    in the mode the model itself was in before (also after an exception)."""
    was_training = model.training
    model.train(training)
    try:
        yield model
    finally:
        model.train(was_training)


def evaluating(model: nn.Module):
    """``with evaluating(model):`` evaluation mode (no dropout) inside, e.g. for statistics or samples a hook takes
    during training; the previous mode afterwards."""
    return model_mode(model, training=False)


@functools.lru_cache(maxsize=None)
def keeps_answer_logits(model_class: type) -> bool:
    """A causal LM (generates; masked LMs do not) whose forward takes ``logits_to_keep``."""
    generates = getattr(model_class, "can_generate", lambda: False)()
    return generates and "logits_to_keep" in inspect.signature(model_class.forward).parameters


def answer_columns(labels: torch.Tensor) -> torch.Tensor:
    """The positions whose logits predict some row's answer token (a causal LM's logit p predicts token p + 1)."""
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().flatten()


def lm_forward(model: nn.Module, labels: torch.Tensor | None, all_logits: bool = False, **inputs):
    """``model(**inputs, labels=labels)``, with ``logits`` and ``loss`` over the answer positions only (see the
    module docstring); ``all_logits=True`` keeps every position's logits (for losses that read them)."""
    inner = unwrapped(model)
    if hasattr(inner, "get_base_model"):  # a peft model passes logits_to_keep on to its base model
        inner = inner.get_base_model()
    if labels is None or all_logits or inner.config.is_encoder_decoder or not keeps_answer_logits(type(inner)):
        return model(**inputs, labels=labels)
    columns = answer_columns(labels)
    if columns.numel() == 0:
        return model(**inputs, labels=labels)
    outputs = model(**inputs, logits_to_keep=columns)
    targets = labels[:, 1:][:, columns]
    logits = outputs.logits.float().flatten(0, 1)
    outputs["loss"] = F.cross_entropy(logits, targets.flatten(), ignore_index=IGNORE_INDEX)
    return outputs


def batch_forward(model: nn.Module, batch: dict[str, torch.Tensor]):
    """``lm_forward`` of a training batch (input_ids, attention_mask, labels)."""
    return lm_forward(model, batch["labels"], input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
