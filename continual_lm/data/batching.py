"""Training batches grouped by length (``--group-by-length``, off by default), so that short and long examples seldom
share a batch and little of what a step computes is padding.

Off by default because it changes what a step trains on, and with the few steps per task of CPU-sized protocols that
changes results far beyond the padding it saves: on the `small` preset's standard order it moved the `single`
reference from AP 57.5 to 48.75 and `mtl` from 61.25 to 48.75 (every task lower; the windows sort a multi-task
phase's examples into nearly one-task batches), for 3-7 % fewer tokens (18 % for `mtl`; bench/group_by_length.md,
bench/padding.md). The papers train on plain shuffled batches.

Each epoch: the examples are shuffled with the phase's seeded generator, the shuffled order is cut into windows of
``WINDOW_BATCHES x batch_size`` examples, each window is sorted by length (stable) and cut into batches, and the
order of all batches is shuffled with the same generator (the one short batch, if any, last). So every example is
seen once per epoch, a batch holds examples of similar length drawn at random from a window (tasks mixed as the
shuffle mixes them: replay's memory and MTL's tasks still share batches), and the batches come from one generator
seeded per phase, so a run repeats itself and a resumed phase repeats what an uninterrupted run did. On N processes
with A accumulation steps the batches are cut at N x A x batch_size (the global batch) and each is dealt out as
N x A per-process batches, so that a step trains on the same global batch as one process with the whole batch. The window is the one of
transformers' ``LengthGroupedSampler`` (50 batches' worth of examples, its "megabatch"); unlike it, the batches are
then shuffled, so the longest one does not always come first. Without the option: plain shuffled batches (the
DataLoader's own ``shuffle=True``).

The length of an example is its number of input tokens (prompt + answer for a causal LM, the encoder input for a
seq2seq model): what the collator pads to the longest member of a batch (collate.py). Measured on the small preset's
real data in bench/padding.md.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

WINDOW_BATCHES = 50  # examples sorted together: this many batches' worth (transformers' megabatch)


class LengthGroupedBatches(torch.utils.data.Sampler[list[int]]):
    """Batches of indices into ``lengths``: shuffled, grouped by length within windows, batch order shuffled."""

    def __init__(self, lengths: Sequence[int], batch_size: int, generator: torch.Generator,
                 window_batches: int = WINDOW_BATCHES, shares: int = 1):
        if batch_size < 1 or window_batches < 1 or shares < 1:
            raise ValueError(f"batch_size, window_batches and shares must be >= 1, got {batch_size}, "
                             f"{window_batches}, {shares}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.generator = generator
        self.global_batch = batch_size * shares
        self.window = window_batches * self.global_batch

    def __len__(self) -> int:
        return sum(len(self._cut(list(range(n)))) for n in self._global_sizes())

    def _global_sizes(self) -> list[int]:
        n = len(self.lengths)
        return [min(self.global_batch, n - k) for k in range(0, n, self.global_batch)]

    def _cut(self, batch: list[int]) -> list[list[int]]:
        """A global batch cut into the per-process batches that accelerate deals out, process 0 first."""
        return [batch[k:k + self.batch_size] for k in range(0, len(batch), self.batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        # Global batches (batch_size x shares) are grouped and shuffled, then each is cut into per-process batches
        # in a row: accelerate gives process p the p-th of every N batches, and each process accumulates its next
        # grad_accum ones, so an optimizer step sees the very global batch one process would with the whole batch
        # (tests/test_distributed.py). The one short global batch (the end of the last window) comes last, so that
        # it shifts no later batch's shares.
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        batches = []
        for start in range(0, len(order), self.window):
            window = sorted(order[start:start + self.window], key=self.lengths.__getitem__)
            batches += [window[k:k + self.global_batch] for k in range(0, len(window), self.global_batch)]
        short = [batches.pop()] if batches and len(batches[-1]) < self.global_batch else []
        for k in torch.randperm(len(batches), generator=self.generator).tolist() + [len(batches)] * len(short):
            yield from self._cut((batches + short)[k])  # a short global batch comes last, as in a plain loader


def train_loader(features: Sequence, batch_size: int, generator: torch.Generator, collate_fn,
                 group_by_length: bool = False, shares: int = 1) -> torch.utils.data.DataLoader:
    """The DataLoader of one training phase over encoded examples (``Encoded``: ``input_ids``), seeded by
    ``generator``: length-grouped batches, or plain shuffled ones (``group_by_length=False``). ``batch_size`` is
    per process; ``shares``: the per-process batches of one optimizer step (processes x gradient accumulation)."""
    from torch.utils.data import DataLoader

    if not group_by_length:
        return DataLoader(features, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=collate_fn)
    sampler = LengthGroupedBatches([len(f.input_ids) for f in features], batch_size, generator, shares=shares)
    return DataLoader(features, batch_sampler=sampler, collate_fn=collate_fn)


def padding_stats(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> dict[str, float]:
    """Tokens processed (each batch padded to its longest member) and how many of them are padding."""
    processed = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    real = sum(lengths[i] for b in batches for i in b)
    return {"processed": processed, "real": real, "padding": processed - real,
            "padding_share": (processed - real) / processed if processed else 0.0}
