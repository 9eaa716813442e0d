"""LoRA adapters on STORM's LLM, through PEFT.

A model folder with an adapter keeps the LLM's base weights, unchanged and under their usual
names, in `model.safetensors`, and the adapter in `adapter/` in PEFT's own format (so PEFT and
other tools read it too). Loading applies the adapter; `merge` folds it into the base weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelFolderError

ADAPTER_DIR = "adapter"


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    # The LLM's attention and MLP projections (Llama / Qwen2 names).
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


def _peft():
    try:
        import peft
    except ModuleNotFoundError:
        raise ModelFolderError("LoRA needs the peft package: pip install 'stormvl[lora]'") from None
    return peft


def has_lora(model) -> bool:
    """The LLM is wrapped by PEFT (some releases leave `peft_config` on a merged model: the
    wrapper's class is what tells)."""
    return type(model.language_model).__module__.split(".")[0] == "peft"


def add_lora(model, settings: LoraSettings) -> None:
    """Wrap the LLM with fresh LoRA adapters (B = 0, so the model's outputs do not change)."""
    peft = _peft()
    config = peft.LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
    )
    try:
        model.language_model = peft.get_peft_model(model.language_model, config)
    except ValueError as e:  # e.g. target modules the LLM does not have
        from ..errors import ConfigError, first_line

        raise ConfigError(f"lora: {first_line(e)}") from None


def load_adapter(model, folder) -> None:
    peft = _peft()
    model.language_model = peft.PeftModel.from_pretrained(model.language_model, Path(folder) / ADAPTER_DIR)


def lora_parameters(model):
    return [p for n, p in model.language_model.named_parameters() if "lora_" in n]


def base_state_dict(state: dict) -> dict:
    """A STORM state dict with the adapter's tensors left out and the LLM's base weights under
    the names they have without PEFT."""
    prefix = "language_model.base_model.model."
    out = {}
    for k, v in state.items():
        if "lora_" in k:
            continue
        if k.startswith(prefix):
            k = "language_model." + k[len(prefix) :]
        out[k.replace(".base_layer.", ".")] = v
    return out


def save_adapter(model, folder) -> None:
    # The embeddings stay out of the adapter even when the video token grew them: the folder's
    # model.safetensors holds them, and the video token's own row is never read (video features
    # replace it), so the adapter stays a few MB rather than a copy of the vocabulary.
    model.language_model.save_pretrained(Path(folder) / ADAPTER_DIR, save_embedding_layers=False)


def merge(model) -> None:
    """Fold the adapter into the LLM's weights and drop PEFT's wrapper."""
    model.language_model = model.language_model.merge_and_unload()
