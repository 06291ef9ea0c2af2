"""Training batches grouped by length (``--group-by-length``, the default), so that short and long examples seldom
share a batch and little of what a step computes is padding.

Each epoch: the examples are shuffled with the phase's seeded generator, the shuffled order is cut into windows of
``WINDOW_BATCHES x batch_size`` examples, each window is sorted by length (stable) and cut into batches, and the order
of all batches is shuffled with the same generator. So every example is seen once per epoch, a batch holds examples
of similar length drawn at random from a window (tasks mixed as the shuffle mixes them: replay's memory and MTL's
tasks still share batches), and the batches come from one generator seeded per phase, so a run repeats itself and a
resumed phase repeats what an uninterrupted run did. The window is the one of transformers'
``LengthGroupedSampler`` (50 batches' worth of examples, its "megabatch"); unlike it, the batches are then shuffled,
so the longest one does not always come first. ``--no-group-by-length`` restores plain shuffled batches (the
DataLoader's own ``shuffle=True``), which the runs before this option used.

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
                 window_batches: int = WINDOW_BATCHES):
        if batch_size < 1 or window_batches < 1:
            raise ValueError(f"batch_size and window_batches must be >= 1, got {batch_size}, {window_batches}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.generator = generator
        self.window = window_batches * batch_size

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)  # every window but the last holds whole batches

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        batches = []
        for start in range(0, len(order), self.window):
            window = sorted(order[start:start + self.window], key=self.lengths.__getitem__)
            batches += [window[k:k + self.batch_size] for k in range(0, len(window), self.batch_size)]
        for k in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[k]


def train_loader(features: Sequence, batch_size: int, generator: torch.Generator, collate_fn,
                 group_by_length: bool = True) -> torch.utils.data.DataLoader:
    """The DataLoader of one training phase over encoded examples (``Encoded``: ``input_ids``), seeded by
    ``generator``: length-grouped batches, or plain shuffled ones (``group_by_length=False``)."""
    from torch.utils.data import DataLoader

    if not group_by_length:
        return DataLoader(features, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=collate_fn)
    sampler = LengthGroupedBatches([len(f.input_ids) for f in features], batch_size, generator)
    return DataLoader(features, batch_sampler=sampler, collate_fn=collate_fn)


def padding_stats(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> dict[str, float]:
    """Tokens processed (each batch padded to its longest member) and how many of them are padding."""
    processed = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    real = sum(lengths[i] for b in batches for i in b)
    return {"processed": processed, "real": real, "padding": processed - real,
            "padding_share": (processed - real) / processed if processed else 0.0}
