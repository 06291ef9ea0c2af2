"""Training batches grouped by length (data/batching.py): deterministic, every example once per epoch, less
padding; plain shuffled batches stay the default; runs from before the option resume as they began."""
import random

import torch
import yaml

from continual_lm.data.batching import WINDOW_BATCHES, LengthGroupedBatches, padding_stats, train_loader
from continual_lm.data.collate import Encoded
from continual_lm.train.assemble import recorded_config, resolve_config
from continual_lm.train.checkpoint import RunDir
from continual_lm.train.run_record import new_record

from helpers import tiny_config


def _lengths(n=500, seed=0):
    rng = random.Random(seed)
    return [rng.randint(5, 120) for _ in range(n)]


def _batches(lengths, batch_size, seed):
    return list(LengthGroupedBatches(lengths, batch_size, torch.Generator().manual_seed(seed)))


def test_same_seed_same_batches_and_every_example_once_per_epoch():
    lengths = _lengths()
    first, again, other = _batches(lengths, 8, 1), _batches(lengths, 8, 1), _batches(lengths, 8, 2)
    assert first == again and first != other
    for batches in (first, other):
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        assert len(batches) == len(LengthGroupedBatches(lengths, 8, torch.Generator())) == 63  # ceil(500 / 8)
    sampler = LengthGroupedBatches(lengths, 8, torch.Generator().manual_seed(1))
    epoch1, epoch2 = list(sampler), list(sampler)
    assert epoch1 == first and epoch2 != epoch1  # the next epoch draws a new order from the same generator
    assert sorted(i for b in epoch2 for i in b) == list(range(len(lengths)))


def test_grouped_batches_pad_less_than_shuffled_ones_and_come_in_random_order():
    lengths = _lengths()
    grouped = _batches(lengths, 8, 1)
    generator = torch.Generator().manual_seed(1)
    shuffled = [b.tolist() for b in torch.randperm(len(lengths), generator=generator).split(8)]
    assert padding_stats(grouped, lengths)["padding_share"] < 0.1 < padding_stats(shuffled, lengths)["padding_share"]
    longest = [max(lengths[i] for i in b) for b in grouped]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)
    # sorted within windows of WINDOW_BATCHES batches only: the longest batches are not all at one end
    assert len(lengths) > WINDOW_BATCHES * 8


def test_padding_counts_match_a_hand_computation():
    stats = padding_stats([[0, 1], [2]], [3, 5, 4])
    assert stats == {"processed": 2 * 5 + 4, "real": 12, "padding": 2, "padding_share": 2 / 14}


def test_examples_of_several_tasks_still_share_batches():
    """Replay's memory and MTL mix tasks in one phase: length grouping keeps them mixed where lengths overlap."""
    rng = random.Random(3)
    task_of = [i % 3 for i in range(300)]
    lengths = [rng.randint(20, 40) for _ in task_of]
    batches = _batches(lengths, 4, 7)
    assert sum(len({task_of[i] for i in b}) > 1 for b in batches) > len(batches) / 2


def test_the_default_is_the_plain_shuffled_loader():
    features = [Encoded(list(range(n))) for n in _lengths(40)]
    plain = [[id(f) for f in b] for b in torch.utils.data.DataLoader(
        features, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(5), collate_fn=list)]
    for loader in (train_loader(features, 4, torch.Generator().manual_seed(5), list),
                   train_loader(features, 4, torch.Generator().manual_seed(5), list, group_by_length=False)):
        assert [[id(f) for f in b] for b in loader] == plain
    grouped = train_loader(features, 4, torch.Generator().manual_seed(5), list, group_by_length=True)
    assert [[id(f) for f in b] for b in grouped] == [[id(features[i]) for i in b] for b in
                                                      _batches([len(f.input_ids) for f in features], 4, 5)]


def test_a_run_from_before_the_option_resumes_with_shuffled_batches(tmp_path):
    """Its config.yaml and run.json have no group_by_length: it trained on plain shuffled batches and must go on so."""
    config = tiny_config(tmp_path)
    config.group_by_length = False
    config = resolve_config(config)
    run_dir = RunDir(tmp_path / "old")
    run_dir.path.mkdir()
    old = config.to_dict()
    del old["group_by_length"]
    run_dir.config_path.write_text(yaml.safe_dump(old))
    record = new_record(config, {"tasks": {}, "unseen": {}, "stream_file": None}, 1)
    del record["config"]["group_by_length"]
    run_dir.write_record(record)
    recorded, _ = recorded_config(run_dir.path)  # no "config.yaml differs from run.json" error either
    assert recorded.group_by_length is False
    assert tiny_config(tmp_path).group_by_length is False  # a new run shuffles plainly unless asked


def test_processes_get_shares_of_the_global_batches_one_process_would_train_on():
    """accelerate deals batch k to process k % N, each accumulates A of them: N processes at batch b with A
    accumulation steps train on the batches of one process with batch N x A x b (here N x A = 3)."""
    lengths = _lengths(103)
    one = _batches(lengths, 6, 4)
    sampler = LengthGroupedBatches(lengths, 2, torch.Generator().manual_seed(4), shares=3)
    shares = list(sampler)
    assert len(shares) == len(sampler)
    rebuilt, chunks = [], iter(shares)
    for batch in one:  # each global batch comes as its consecutive per-process shares (the last may be short)
        joined = []
        while len(joined) < len(batch):
            joined += next(chunks)
        rebuilt.append(joined)
    assert rebuilt == one and next(chunks, None) is None
    assert all(len(share) == 2 for share in shares[:-1])
