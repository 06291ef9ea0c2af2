"""Unlabelled text corpora for continual pre-training (MIGU's DAS setting): token blocks and the LM losses' labels.

docs/continual_pretraining.md describes the setting; the collator (data/collate.py) applies the labels.

* ``corpus_blocks`` — a corpus (list of documents) tokenised, concatenated and cut into fixed-length blocks,
  as causal/masked LM pre-training does;
* ``corpus_block_task`` — a corpus task (documents) turned into one training example per token block (the loop
  calls it once the tokenizer is known);
* ``mask_tokens`` — BERT's masked LM corruption: exactly ``round(probability * n)`` of each row's ``n`` maskable
  tokens (not padding, not special tokens; at least one when n > 0) become targets; of those 80 % are replaced by
  the mask token, 10 % by a random token and 10 % kept (Devlin et al., 2019); every other label is -100.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch

from ..errors import ContinualLMError
from .tasks import Example, Task

IGNORE = -100


def corpus_blocks(documents: Iterable[str], tokenizer, block_size: int) -> list[list[int]]:
    """Token blocks of ``block_size`` from the documents joined by the tokenizer's EOS (a short tail is dropped,
    unless the whole corpus is shorter than one block)."""
    if block_size <= 0:
        raise ContinualLMError(f"block size must be a positive integer, got {block_size}")
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids: list[int] = []
    for text in documents:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + separator
    if not ids:
        raise ContinualLMError("the corpus is empty: expected at least one non-empty document")
    if len(ids) < block_size:
        return [ids]
    return [ids[k:k + block_size] for k in range(0, len(ids) - block_size + 1, block_size)]


def corpus_block_task(task: Task, tokenizer, block_size: int) -> Task:
    """The corpus task with its documents (``train``) replaced by one example per token block, each block's text
    decoded so that replay, EWC and checkpoints handle it as any other example (the collator re-encodes it)."""
    blocks = corpus_blocks([ex.input for ex in task.train], tokenizer, block_size)
    return task.with_examples(train=[Example(input=tokenizer.decode(block), target="") for block in blocks])


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, *, mask_token_id: int, vocab_size: int,
                probability: float = 0.15, special_ids: Iterable[int] = (),
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(corrupted input ids, labels) for the masked LM loss; see the module docstring."""
    if not 0 < probability < 1:
        raise ContinualLMError(f"MLM masking probability must be in (0, 1), got {probability}")
    maskable = attention_mask.bool()
    for special in special_ids:
        maskable &= input_ids != special
    scores = torch.rand(input_ids.shape, generator=generator)
    scores[~maskable] = float("inf")  # never chosen
    chosen = torch.zeros_like(maskable)
    for row in range(input_ids.shape[0]):
        n = int(maskable[row].sum())
        k = max(1, round(probability * n)) if n else 0
        chosen[row, scores[row].argsort()[:k]] = True
    labels = input_ids.masked_fill(~chosen, IGNORE)
    corrupted = input_ids.clone()
    action = torch.rand(input_ids.shape, generator=generator)
    corrupted[chosen & (action < 0.8)] = mask_token_id
    randomised = chosen & (action >= 0.8) & (action < 0.9)
    corrupted[randomised] = torch.randint(vocab_size, (int(randomised.sum()),), generator=generator)
    return corrupted, labels
