"""`continual-lm plan`: exact parameter counts on the meta device (hand-computed for LoRA on the offline presets,
and equal to what a real run checkpoints), and the documented memory formula."""
import json

import pytest

from continual_lm.cli import main
from continual_lm.errors import ContinualLMError
from continual_lm.models.backbone import load_backbone
from continual_lm.plan import BYTES, activation_bytes, load_config, plan
from continual_lm import run

from helpers import tiny_config, checkpoint_tensors


def llama_2_7b_params(h=4096, layers=32, inter=11008, vocab=32000) -> int:
    per_layer = 4 * h * h + 3 * h * inter + 2 * h  # q,k,v,o; gate,up,down; two RMSNorms
    return 2 * vocab * h + layers * per_layer + h  # embeddings + untied lm_head, layers, final norm


def t5_large_params(d=1024, ff=4096, layers=24, heads=16, vocab=32128, buckets=32) -> int:
    encoder = layers * (4 * d * d + 2 * d * ff + 2 * d) + d + buckets * heads
    decoder = layers * (8 * d * d + 2 * d * ff + 3 * d) + d + buckets * heads  # + cross-attention
    return vocab * d + encoder + decoder  # shared embedding, tied to the lm_head


def test_llama_2_7b_lora_counts_match_the_hand_computation():
    result = plan("llama-2-7b", "inclora", 15, lora_r=8)
    per_task = 2 * 32 * 8 * (4096 + 4096)  # q and v in 32 layers: A [8, 4096] + B [4096, 8]
    assert result.frozen == llama_2_7b_params() == 6_738_415_616
    assert result.trainable_per_phase == [per_task] * 15
    assert result.total == result.frozen + 15 * per_task
    assert result.checkpoint_bytes_per_phase == [(i + 1) * per_task * 4 for i in range(15)]  # float32 by default


def test_t5_large_lora_counts_match_the_hand_computation():
    result = plan("t5-large", "inclora", 4, lora_r=4, dtype="bfloat16")
    per_task = 2 * (24 + 2 * 24) * 4 * (1024 + 1024)  # q and v of encoder self-, decoder self- and cross-attention
    assert result.frozen == t5_large_params() == 737_668_096
    assert result.trainable_per_phase == [per_task] * 4
    assert result.checkpoint_bytes_per_phase[-1] == 4 * per_task * 2


def test_full_fine_tuning_trains_everything_and_mtl_has_one_phase():
    seqft = plan("t5-large", "seqft", 3)
    assert seqft.frozen == 0 and seqft.trainable_per_phase == [t5_large_params()] * 3
    mtl = plan("llama-2-7b", "mtl", 5)
    assert len(mtl.trainable_per_phase) == 1


@pytest.mark.parametrize("method", ["l2p", "progprompt", "lfpt5", "epi", "sapt-prompt"])
def test_prompt_methods_plan_on_the_meta_device_with_the_backbone_frozen(method):
    """The prompt methods read the embedding from the model, not from a loaded backbone (plan passes none)."""
    result = plan("t5-large", method, 3)
    assert result.frozen == t5_large_params() and len(result.trainable_per_phase) == 3
    prompt = 10 * 1024  # the default 10-token prompt of d_model 1024
    if method in ("progprompt", "epi"):  # a new prompt per task, the earlier ones kept (frozen)
        assert result.trainable_per_phase == [prompt] * 3
        assert result.checkpoint_bytes_per_phase == [(i + 1) * prompt * 4 for i in range(3)]
    if method == "lfpt5":  # one prompt through the whole stream
        assert result.checkpoint_bytes_per_phase == [prompt * 4] * 3


def test_counts_equal_what_a_real_run_checkpoints(tmp_path):
    """amlora (LoRAs + per-bank selector vectors that grow every task): the meta-device plan of the tiny model
    equals the parameters the loop saves after each phase."""
    tasks = ["sentiment", "number_sign"]
    run(tiny_config(tmp_path, method="amlora", tasks=tasks, max_train_per_task=4, max_test_per_task=2,
                    method_options={"amlora": {"attention_samples": 0}}))
    result = plan("tiny-random-llama", "amlora", 2)
    for row in range(2):
        saved = checkpoint_tensors(tmp_path / "run", row)
        assert sum(t.numel() * t.element_size() for t in saved.values()) == result.checkpoint_bytes_per_phase[row]
    assert result.frozen == sum(p.numel() for p in load_backbone("tiny-random-llama").model.parameters())


def test_memory_estimate_follows_the_documented_formula():
    result = plan("llama-2-7b", "inclora", 2, dtype="bfloat16", batch_size=4, seq_len=256)
    b, trained = BYTES["bfloat16"], max(result.trainable_per_phase)
    config = load_config("llama-2-7b")
    assert result.memory["weights"] == result.total * b
    assert result.memory["gradients"] == trained * b and result.memory["optimizer"] == 2 * trained * b
    per_layer = 4 * 256 * 4096 * (34 + 5 * 32 * 256 / 4096) * b / 2
    assert result.memory["activations"] == int(32 * per_layer)
    # the loss's logits: the union of the batch's answer positions, at most 4 rows x 50 answer tokens of 256
    assert result.memory["logits"] == 2 * 4 * (4 * 50) * 32000 * 4
    assert plan("llama-2-7b", "inclora", 2, batch_size=4, seq_len=256, target_len=100).memory["logits"] == \
        2 * 4 * 256 * 32000 * 4
    assert plan("t5-large", "inclora", 2, batch_size=4, seq_len=256).memory["logits"] == 2 * 4 * 50 * 32128 * 4
    assert result.memory["total"] == sum(v for k, v in result.memory.items() if k != "total")
    checkpointed = activation_bytes(config, 4, 256, "bfloat16", gradient_checkpointing=True)
    assert checkpointed == int(32 * 4 * 256 * 4096 * b + per_layer) < result.memory["activations"]


def test_memory_per_process_under_each_engine():
    """LLaMA-2-7B full fine-tuning in bfloat16 on 8 processes: what each engine keeps per process."""
    runs = {e: plan("llama-2-7b", "seqft", 1, dtype="bfloat16", engine=e, processes=1 if e == "single" else 8)
            for e in ("single", "ddp", "deepspeed-zero2", "deepspeed-zero3", "fsdp")}
    p = runs["single"].total  # seqft trains every parameter
    assert max(runs["single"].trainable_per_phase) == p == 6_738_415_616
    assert runs["ddp"].memory == runs["single"].memory  # DDP replicates everything
    zero2, zero3, fsdp = runs["deepspeed-zero2"].memory, runs["deepspeed-zero3"].memory, runs["fsdp"].memory
    assert zero2["weights"] == zero3["weights"] == fsdp["weights"] == 2 * p  # the whole model between phases
    assert zero2["gradients"] == zero3["gradients"] == 2 * p // 8
    assert zero2["optimizer"] == zero3["optimizer"] == (8 + 4) * p // 8  # float32 AdamW states + master weights
    assert "weights, partitioned copy" not in zero2 and zero3["weights, partitioned copy"] == 2 * p // 8
    assert fsdp["optimizer"] == 2 * 2 * p // 8
    assert runs["single"].memory["total"] > zero2["total"] > fsdp["total"]
    with pytest.raises(ContinualLMError, match="--engine must be one of"):
        plan("tiny-random-llama", "inclora", 1, engine="zero3")
    with pytest.raises(ContinualLMError, match="--processes"):
        plan("tiny-random-llama", "inclora", 1, engine="ddp", processes=0)


def test_cli_plan_prints_counts_and_reads_a_config_json(tmp_path, capsys):
    from transformers import LlamaConfig

    assert main(["plan", "--model", "llama-2-7b", "--method", "inclora", "--tasks", "3", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["trainable_per_phase"] == [2 * 32 * 8 * 8192] * 3 and printed["memory"]["total"] > 0
    LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                vocab_size=100).save_pretrained(tmp_path)
    assert main(["plan", "--model", str(tmp_path / "config.json"), "--method", "seqlora", "--tasks", "2",
                 "--lora-r", "2"]) == 0
    out = capsys.readouterr().out
    assert f"| trainable in phase 1 | {2 * 3 * 2 * 64:,} |" in out and "activations" in out


@pytest.mark.parametrize("bad", [dict(tasks=0), dict(tasks=2, dtype="int8"), dict(tasks=2, seq_len=0)])
def test_bad_plan_options_are_clear_errors(bad):
    with pytest.raises(ContinualLMError, match="--tasks|--dtype|--seq-len"):
        plan("tiny-random-llama", "inclora", **bad)
