"""Building blocks of continual pre-training (DAS setting): LM labels, MLM masking, corpus blocks, end-task scores."""
import random

import pytest
import torch

from continual_lm.data.corpus import IGNORE, causal_lm_labels, corpus_blocks, mask_tokens
from continual_lm.errors import ContinualLMError
from continual_lm.train.end_task import end_task_scores, macro_f1

MASK, PAD, CLS = 4, 0, 1


def padded_batch(lengths, width=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 200, (len(lengths), width), generator=g)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
        ids[row, n:] = PAD
        ids[row, 0] = CLS
    return ids, mask


def test_mlm_masks_exactly_the_configured_fraction_and_never_padding_or_special_tokens():
    lengths = [40, 21, 11, 2]
    ids, mask = padded_batch(lengths)
    corrupted, labels = mask_tokens(ids, mask, mask_token_id=MASK, vocab_size=200, probability=0.2,
                                    special_ids=[CLS], generator=torch.Generator().manual_seed(1))
    chosen = labels != IGNORE
    for row, n in enumerate(lengths):
        maskable = n - 1  # the CLS token is special
        assert int(chosen[row].sum()) == max(1, round(0.2 * maskable))
        assert not chosen[row, n:].any() and not chosen[row, 0]  # padding and special tokens are never targets
    assert torch.equal(labels[chosen], ids[chosen])  # targets are the original tokens
    assert torch.equal(corrupted[~chosen], ids[~chosen])  # nothing else is touched


def test_mlm_corruption_is_80_percent_mask_10_random_10_kept():
    ids, mask = padded_batch([400] * 50, width=400)
    corrupted, labels = mask_tokens(ids, mask, mask_token_id=MASK, vocab_size=200, probability=0.15,
                                    generator=torch.Generator().manual_seed(0))
    chosen = labels != IGNORE
    assert int(chosen.sum()) == 50 * 60
    masked = (corrupted[chosen] == MASK).float().mean().item()
    kept = (corrupted[chosen] == ids[chosen]).float().mean().item()
    assert 0.77 < masked < 0.83 and 0.08 < kept < 0.13  # random replacements may hit the original token


def test_mlm_rejects_a_probability_outside_0_1():
    ids, mask = padded_batch([5])
    with pytest.raises(ContinualLMError, match="probability"):
        mask_tokens(ids, mask, mask_token_id=MASK, vocab_size=200, probability=1.5)


def test_causal_lm_labels_ignore_padding():
    ids, mask = padded_batch([5, 3], width=6)
    labels = causal_lm_labels(ids, mask)
    assert labels[0, :5].tolist() == ids[0, :5].tolist() and labels[0, 5] == IGNORE
    assert labels[1, 3:].tolist() == [IGNORE] * 3


def test_corpus_blocks_concatenate_documents_with_eos():
    from continual_lm.models.backbone import load_backbone

    tokenizer = load_backbone("tiny-random-llama", seed=0).tokenizer
    documents = ["first document", "second one", "third"]
    blocks = corpus_blocks(documents, tokenizer, block_size=8)
    eos = [tokenizer.eos_token_id]
    stream = [i for d in documents for i in tokenizer(d, add_special_tokens=False)["input_ids"] + eos]
    assert all(len(b) == 8 for b in blocks) and len(blocks) == len(stream) // 8
    assert [i for b in blocks for i in b] == stream[:len(blocks) * 8]


def test_macro_f1_matches_a_hand_computation():
    # class 0: TP 2, FP 1, FN 0 -> 4/5; class 1: TP 1, FP 1, FN 1 -> 2/4; class 2: TP 0, FP 0, FN 1 -> 0
    predictions, references = [0, 0, 0, 1, 1], [0, 0, 1, 1, 2]
    assert macro_f1(predictions, references, 3) == pytest.approx(100 * (0.8 + 0.5 + 0) / 3)
    assert macro_f1([1, 0], [1, 0], 3) == pytest.approx(100 * 2 / 3)  # an absent class scores 0


def test_end_task_fine_tunes_a_copy_and_scores_accuracy_and_macro_f1():
    from continual_lm.models.backbone import load_backbone

    backbone = load_backbone("tiny-random-llama", seed=0)
    rng = random.Random(0)
    words = ["great", "lovely", "awful", "boring"]  # first two: label 0, last two: label 1

    def pairs(n):
        return [(f"the film was {w} {rng.randint(0, 99)}", words.index(w) // 2) for w in rng.choices(words, k=n)]

    before = {n: p.detach().clone() for n, p in backbone.model.named_parameters()}
    scores = end_task_scores(backbone.model, backbone.tokenizer, pairs(64), pairs(32), num_labels=2, epochs=20,
                             lr=3e-3, batch_size=16)
    assert set(scores) == {"accuracy", "macro_f1"}
    assert scores["accuracy"] >= 90.0 and scores["macro_f1"] >= 85.0
    assert all(torch.equal(p, before[n]) for n, p in backbone.model.named_parameters())  # the original is unchanged
