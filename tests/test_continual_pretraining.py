"""Continual pre-training (DAS setting): the building blocks (LM labels, MLM masking, corpus blocks, end-task scores)
and their integration (stream YAML, collator, masked-LM models, the loop's end-task evaluation, method refusals)."""
import json
import random

import pytest
import torch

from continual_lm.config import RunConfig
from continual_lm.data.collate import Collator
from continual_lm.data.corpus import IGNORE, corpus_blocks, mask_tokens
from continual_lm.data.formats import read_custom_stream
from continual_lm.data.tasks import CORPUS, Example, Task
from continual_lm.errors import ContinualLMError
from continual_lm.eval.cl_metrics import cl_metrics
from continual_lm.models.backbone import default_lora_targets, is_encoder_only, load_backbone
from continual_lm.train.end_task import end_task_scores, macro_f1
from continual_lm import run

from helpers import load_script, run_crashed_in_first_evaluation_then_resumed, tiny_config, checkpoint_tensors
from test_loop import check_contract

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


def test_corpus_blocks_concatenate_documents_with_eos():
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


# ---------------------------------------------------------------------------------------------------------------
# The integration: stream YAML, collator, models, loop evaluation, method refusals

def write_stream(folder, **sizes):
    module = load_script("examples/continual_pretraining/make_stream.py")
    return module.write_stream(folder, **{"documents": 24, "train": 16, "test": 8, "epochs": 3, **sizes})


def corpus_config(tmp_path, stream, model, method="seqlora", **overrides):
    settings = dict(benchmark="custom", stream_file=str(stream), model=model, method=method, seed=5,
                    output_dir=str(tmp_path / "run"), max_train_per_task=12, max_input_length=48, batch_size=8,
                    lr=5e-3, progress=False)
    settings.update(overrides)
    return RunConfig(**settings)


def test_stream_yaml_reads_a_corpus_with_its_end_task(tmp_path):
    restaurant, phone = read_custom_stream(write_stream(tmp_path))
    assert restaurant.kind == phone.kind == CORPUS and restaurant.metric == "accuracy"
    lines = (tmp_path / "restaurant" / "corpus.txt").read_text().splitlines()
    assert [ex.input for ex in restaurant.train] == lines  # text file: one document per line
    assert [ex.input for ex in phone.train] == [json.loads(x)["text"] for x in
                                                (tmp_path / "phone" / "corpus.jsonl").read_text().splitlines()]
    end = restaurant.extra["end_task"]
    assert end["labels"] == ["negative", "positive"] and len(end["train"]) == 16 and len(restaurant.test) == 8
    assert end["epochs"] == 3 and end["lr"] == 0.001


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop("end_task"), "'end_task' is missing"),
    (lambda t: t.update(instruction="x"), "'instruction'.*do not apply to a corpus task"),
    (lambda t: t["end_task"].update(labels=["good", "bad"]), "label 'negative'.*not one of the labels"),
    (lambda t: t["end_task"].update(epochs=0), "'epochs' must be a positive integer"),
])
def test_stream_yaml_errors_name_the_task_and_the_problem(tmp_path, edit, message):
    import yaml

    path = write_stream(tmp_path)
    data = yaml.safe_load(path.read_text())
    edit(data["tasks"][1])
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ContinualLMError, match=f"task 'phone'.*{message}"):
        read_custom_stream(path)


def corpus_task():
    return Task("domain", CORPUS, "accuracy", "", train=[], test=[])


def test_collator_masks_the_configured_fraction_of_corpus_blocks_and_never_padding():
    tokenizer = load_backbone("tiny-random-bert", seed=0).tokenizer
    collator = Collator(tokenizer, is_seq2seq=False, max_input_length=64, max_target_length=8, is_encoder_only=True,
                        mlm_probability=0.25)
    texts = ["x" * 62, "y" * 30, "z" * 9]  # 62 bytes + <s> </s> = 64 tokens; shorter rows are padded
    items = [collator.encode_train(corpus_task(), Example(text, ""), 0) for text in texts]
    collator.mlm_generator.manual_seed(0)
    batch = collator.train_batch(items)
    original = collator._pad([e.input_ids for e in items], tokenizer.pad_token_id, left=False)
    targets = batch["labels"] != IGNORE
    for row, text in enumerate(texts):
        n = len(text)  # maskable: the text's tokens, not <s>, </s> or padding
        assert int(targets[row].sum()) == round(0.25 * n)
        assert batch["attention_mask"][row].sum() == n + 2 and not targets[row, n + 2:].any()
        assert not targets[row, 0] and not targets[row, n + 1]  # <s> and </s> are never targets
    assert torch.equal(batch["labels"][targets], original[targets])
    assert torch.equal(batch["input_ids"][~targets], original[~targets])
    collator.mlm_generator.manual_seed(0)  # the loop re-seeds it every phase: the same masks again
    assert torch.equal(collator.train_batch(items)["labels"], batch["labels"])


def test_collator_gives_decoders_causal_lm_labels_on_corpus_blocks():
    tokenizer = load_backbone("tiny-random-llama", seed=0).tokenizer
    collator = Collator(tokenizer, is_seq2seq=False, max_input_length=16, max_target_length=8)
    items = [collator.encode_train(corpus_task(), Example(text, ""), 0) for text in ["a" * 40, "bb"]]
    batch = collator.train_batch(items)
    assert batch["input_ids"].shape == (2, 16)  # truncated to max_input_length
    # the causal LM loss learns every real token; padding is ignored
    assert torch.equal(batch["labels"], batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE))
    assert (batch["labels"][1, 2:] == IGNORE).all()


def test_encoder_only_models_are_detected_and_load_as_masked_lms():
    from transformers import BertConfig, LlamaConfig, T5Config

    assert is_encoder_only(BertConfig()) and not is_encoder_only(BertConfig(is_decoder=True))
    assert not is_encoder_only(LlamaConfig()) and not is_encoder_only(T5Config())
    backbone = load_backbone("tiny-random-bert", seed=0)
    assert backbone.is_encoder_only and type(backbone.model).__name__ == "BertForMaskedLM"
    assert default_lora_targets(backbone.model) == ["query", "value"]


def test_end_task_does_not_run_the_models_hooks():
    from continual_lm.methods.migu import MagnitudeStats, select_targets

    backbone = load_backbone("tiny-random-llama", seed=0)
    stats = MagnitudeStats(backbone.model, select_targets(backbone.model, None))
    backbone.model.train()
    end_task_scores(backbone.model, backbone.tokenizer, [("good", 0), ("bad", 1)], [("good", 0)], num_labels=2,
                    epochs=1)
    assert stats.output == {}  # MIGU's statistics did not see the end task's fine-tuning
    backbone.model(input_ids=torch.tensor([[5, 6, 7]]))
    assert stats.output  # (they do see the model's own training forward)


def check_corpus_results(results, T):
    check_contract(results, T)  # every key of the results.json contract, matrix in 0..100, metrics from it
    assert set(results["metric_per_task"].values()) == {"accuracy"}
    f1 = results["matrix_macro_f1"]
    assert len(f1) == T and all((0 <= f1[i][j] <= 100) if j <= i else f1[i][j] is None
                                for i in range(T) for j in range(T))
    assert results["metrics_macro_f1"] == cl_metrics(f1)


@pytest.mark.parametrize("model, method", [("tiny-random-llama", "inclora+migu"),
                                           ("tiny-random-bert", "seqlora+replay")])
def test_continual_pretraining_run_writes_valid_results_and_resumes_to_the_same(tmp_path, monkeypatch, model, method):
    stream = write_stream(tmp_path / "data")
    reference = run(corpus_config(tmp_path / "a", stream, model, method))
    check_corpus_results(reference, 2)
    on_disk = json.loads((tmp_path / "a" / "run" / "results.json").read_text())
    assert on_disk["matrix_macro_f1"] == reference["matrix_macro_f1"]
    if model == "tiny-random-bert":
        import continual_lm

        with pytest.raises(ContinualLMError, match="encoder-only"):
            continual_lm.load_run(tmp_path / "a" / "run").predict(["a review"])
    report = (tmp_path / "a" / "run" / "report.md").read_text()
    assert "## End-task macro-F1 matrix" in report and f"{reference['matrix_macro_f1'][1][0]:.1f}" in report
    predictions = json.loads((tmp_path / "a" / "run" / "predictions" / "after_phase_01.json").read_text())
    assert predictions["restaurant"] == {"accuracy": reference["matrix"][1][0],
                                         "macro_f1": reference["matrix_macro_f1"][1][0]}

    resumed = run_crashed_in_first_evaluation_then_resumed(
        lambda where: corpus_config(where, stream, model, method), tmp_path / "b")
    for key in ("matrix", "matrix_macro_f1", "metrics", "metrics_macro_f1"):
        assert resumed[key] == reference[key]
    weights = [checkpoint_tensors(tmp_path / name / "run", 1)
               for name in ("a", "b")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # the same training (and MLM masks)


@pytest.mark.parametrize("method, refused", [("amlora", "amlora"), ("sapt-lora", "sapt-lora"),
                                             ("moelora", "moelora"), ("amlora+migu", "amlora")])
def test_methods_that_make_no_sense_on_corpora_are_refused(tmp_path, method, refused):
    stream = write_stream(tmp_path / "data")
    with pytest.raises(ContinualLMError, match=f"task 'restaurant' is an unlabelled corpus.*method '{refused}'"):
        run(corpus_config(tmp_path, stream, "tiny-random-llama", method))
    assert not (tmp_path / "run" / "config.yaml").exists()  # refused before anything is written


def test_models_that_cannot_train_the_stream_are_refused(tmp_path):
    stream = write_stream(tmp_path / "data")
    with pytest.raises(ContinualLMError, match="task 'restaurant' is a corpus.*encoder-decoder"):
        run(corpus_config(tmp_path / "t5", stream, "tiny-random-t5"))
    with pytest.raises(ContinualLMError, match="'tiny-random-bert' is encoder-only.*cannot generate"):
        run(tiny_config(tmp_path / "bert", method="seqlora", model="tiny-random-bert"))
