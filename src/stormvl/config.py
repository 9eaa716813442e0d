"""StormConfig: one saved record of everything that shapes what the LLM sees, so evaluation reads
the same frame count, pooling and preprocessing that training used.

`FIELDS` below is the one place each setting is documented: its default, its group, and when it
may change. "fixed" settings shape the weights (change them and the checkpoint no longer fits);
"training" settings may change between training stages (the long-video stage switches temporal
pooling on) but a trained model should be run as it was trained; "any" settings may change at
test time too.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from transformers import AutoConfig, PretrainedConfig, SiglipVisionConfig

from .errors import ConfigError


@dataclass(frozen=True)
class Field:
    default: Any
    group: str  # vision | language model | temporal encoder | reduction | prompting | preprocessing
    changes: str  # "fixed" | "training" | "any": when the value may change (module docstring)
    doc: str
    choices: tuple | None = None


POSITIVE_INT = "an integer >= 1"

FIELDS: dict[str, Field] = {
    # -- vision ------------------------------------------------------------------------------------
    "vision_config": Field(None, "vision", "fixed", "The vision tower's transformers config (SigLIP by default)."),
    "projector_type": Field(
        "linear",
        "vision",
        "fixed",
        "'linear' (STORM), 'mlp' (VILA's two-layer projector, the baseline) or 'mlp2x_gelu' (LLaVA's: "
        "Linear, GELU, Linear, no LayerNorm).",
        ("linear", "mlp", "mlp2x_gelu"),
    ),
    "vision_feature_layer": Field(
        None,
        "vision",
        "fixed",
        "None: the tower's output after its final LayerNorm (STORM). An int k: its hidden state k as "
        "transformers counts them (0 the embeddings, -1 the last layer's output before the final norm, "
        "as LLaVA-OneVision reads it); the layers after k and the final norm are not built.",
    ),
    "vision_feature_select_strategy": Field(
        "full",
        "vision",
        "fixed",
        "'full': every token of the tower's output; 'default': all but the first (a CLS token), as LLaVA names it.",
        ("full", "default"),
    ),
    "downsample": Field(
        2, "vision", "fixed", "Pixel-shuffle factor before the projector: 2 makes 2x2 patches one token."
    ),
    "vision_batch_size": Field(32, "vision", "any", "Frames per vision-tower call; bounds memory, not results."),
    # -- language model ----------------------------------------------------------------------------
    "text_config": Field(None, "language model", "fixed", "The causal LM's transformers config (Qwen2 by default)."),
    # -- temporal encoder --------------------------------------------------------------------------
    "use_temporal_encoder": Field(
        True, "temporal encoder", "fixed", "False is the VILA baseline in the same code path."
    ),
    "temporal_layers": Field(2, "temporal encoder", "fixed", "Mamba layers L (the paper does not give L)."),
    "temporal_bidirectional": Field(
        True, "temporal encoder", "fixed", "Scan both ways (the paper's default); False streams (Table 7)."
    ),
    "temporal_merge": Field(
        "add",
        "temporal encoder",
        "fixed",
        "How the two scan directions combine: 'add', or 'concat' + Linear.",
        ("add", "concat"),
    ),
    "mamba_version": Field(
        2,
        "temporal encoder",
        "fixed",
        "1: Mamba-1 (S6), the block the paper names; 2: Mamba-2 (SSD), whose scan is matmul-bound.",
        (1, 2),
    ),
    "temporal_mixer": Field(
        "mamba",
        "temporal encoder",
        "fixed",
        "'mamba' (STORM); 'token_mlp' is the ablation's control: per-token MLPs with the Mamba layers' "
        "parameter count, mixing nothing across tokens.",
        ("mamba", "token_mlp"),
    ),
    "mamba_state_size": Field(64, "temporal encoder", "fixed", "SSM state size n (per head for Mamba-2)."),
    "mamba_expand": Field(2, "temporal encoder", "fixed", "Inner width = expand * LLM width."),
    "mamba_head_dim": Field(64, "temporal encoder", "fixed", "Channels per Mamba-2 head (Mamba-2 only)."),
    "mamba_dt_rank": Field(None, "temporal encoder", "fixed", "Mamba-1's dt projection rank; None: ceil(width / 16)."),
    "mamba_n_groups": Field(1, "temporal encoder", "fixed", "Mamba-2 only: groups of B/C shared by heads."),
    "mamba_conv_kernel": Field(4, "temporal encoder", "fixed", "Width of the causal depthwise conv."),
    "mamba_chunk_size": Field(64, "temporal encoder", "any", "Mamba-2 only: chunk of the SSD scan; speed only."),
    # -- reduction ---------------------------------------------------------------------------------
    "temporal_pool": Field(1, "reduction", "training", "k_t: average every k_t consecutive encoded frames."),
    "spatial_pool": Field(1, "reduction", "training", "k_s: average k_s x k_s tokens of each frame's grid."),
    "spatial_pool_mode": Field(
        "average",
        "reduction",
        "training",
        "'average' (STORM's, the grid must divide by k_s) or 'bilinear': resize each frame's grid to "
        "ceil(h / k_s) x ceil(w / k_s) (LLaVA-OneVision's video pooling).",
        ("average", "bilinear"),
    ),
    "temporal_sample": Field(1, "reduction", "any", "s: keep every s-th frame after pooling (training-free)."),
    "num_frames": Field(32, "reduction", "any", "Frames sampled uniformly from a video when none are asked for."),
    # -- prompting ---------------------------------------------------------------------------------
    "video_token": Field("<video>", "prompting", "fixed", "The placeholder token the processor expands."),
    "video_token_id": Field(None, "prompting", "fixed", "Its id in the tokenizer (filled in by the processor)."),
    "video_position": Field(
        "before",
        "prompting",
        "training",
        "The video 'before' the question (LLaVA's convention) or 'after' it.",
        ("before", "after"),
    ),
    "prompt_timestamps": Field(
        False,
        "prompting",
        "training",
        "Tell the LLM the video's length and each sampled frame's time, as LLaVA-Video does (\"The video lasts "
        '62.0 seconds, and 32 frames are sampled at 0.0s, 2.0s, ...").',
    ),
    "video_newline": Field(
        False,
        "prompting",
        "fixed",
        "Append one learned token after a video's frames (LLaVA-OneVision's image_newline); it counts "
        "in tokens_per_video.",
    ),
    "chat_content": Field(
        "text",
        "prompting",
        "fixed",
        "How the chat template reads a user turn: 'text' (a string holding the video placeholder) or "
        "'parts' (transformers' multimodal list of {'type': 'video'} and {'type': 'text'} parts).",
        ("text", "parts"),
    ),
    "choice_mode": Field(
        "generate",
        "prompting",
        "any",
        "Multiple choice: 'generate' a letter, or rank the options by 'likelihood' (one encoding for all).",
        ("generate", "likelihood"),
    ),
    # -- preprocessing -----------------------------------------------------------------------------
    "image_mean": Field(
        (0.5, 0.5, 0.5), "preprocessing", "fixed", "Per-channel mean the vision tower was trained with."
    ),
    "image_std": Field((0.5, 0.5, 0.5), "preprocessing", "fixed", "Per-channel std the vision tower was trained with."),
    "resample": Field(
        "bilinear",
        "preprocessing",
        "fixed",
        "How frames are resized to the tower's input size (antialiased).",
        ("bilinear", "bicubic"),
    ),
}

# Keys transformers' own PretrainedConfig reads or writes in config.json, across the releases
# stormvl supports (4.46 to 5.x): accepted, and left to transformers. Asked of the running release
# too, so a new base key does not break loading.
TRANSFORMERS_KEYS = (
    set(inspect.signature(PretrainedConfig.__init__).parameters)
    | set(PretrainedConfig().to_dict())
    | {
        "_name_or_path", "name_or_path", "_commit_hash", "_attn_implementation_autoset", "attn_implementation",
        "transformers_version", "architectures", "model_type", "dtype", "torch_dtype", "use_bfloat16",
        "tf_legacy_loss", "pruned_heads", "tie_word_embeddings", "chunk_size_feed_forward", "is_encoder_decoder",
        "is_decoder", "cross_attention_hidden_size", "add_cross_attention", "tie_encoder_decoder", "finetuning_task",
        "id2label", "label2id", "tokenizer_class", "prefix", "bos_token_id", "pad_token_id", "eos_token_id",
        "sep_token_id", "decoder_start_token_id", "task_specific_params", "problem_type", "output_attentions",
        "output_hidden_states", "return_dict", "torchscript", "max_length", "min_length", "do_sample",
        "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p",
        "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size",
        "bad_words_ids", "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
        "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
        "begin_suppress_tokens",
    }
) - {"self", "kwargs"}  # fmt: skip


def _field_docs() -> str:
    lines, group = [], None
    for name, f in FIELDS.items():
        if f.group != group:
            group = f.group
            lines.append(f"\n    {group}:")
        lines.append(f"      {name} (default {f.default!r}; changes: {f.changes}): {f.doc}")
    return "\n".join(lines)


class StormConfig(PretrainedConfig):
    model_type = "storm"
    sub_configs = {"vision_config": AutoConfig, "text_config": AutoConfig}

    def __init__(self, **kwargs):
        unknown = sorted(set(kwargs) - set(FIELDS) - TRANSFORMERS_KEYS)
        if unknown:
            raise ConfigError(f"StormConfig: unknown key(s) {unknown}; known: {sorted(FIELDS)}")
        for name, f in FIELDS.items():
            if name not in ("vision_config", "text_config"):
                value = kwargs.pop(name, f.default)
                setattr(self, name, list(value) if isinstance(value, tuple) else value)
        self.vision_config = _sub_config(kwargs.pop("vision_config", None), "siglip_vision_model")
        self.text_config = _sub_config(kwargs.pop("text_config", None), "qwen2")
        super().__init__(**kwargs)
        self.validate()

    def validate(self):
        for name in FIELDS:
            check_field(name, getattr(self, name))
        if self.mamba_dt_rank is not None and (
            isinstance(self.mamba_dt_rank, bool) or not isinstance(self.mamba_dt_rank, int) or self.mamba_dt_rank < 1
        ):
            raise ConfigError(
                f"bad StormConfig: mamba_dt_rank must be None or {POSITIVE_INT}, got {self.mamba_dt_rank!r}"
            )
        k = self.vision_feature_layer
        if k is not None and (isinstance(k, bool) or not isinstance(k, int)):
            raise ConfigError(f"bad StormConfig: vision_feature_layer must be None or an integer, got {k!r}")
        d = self.text_config.hidden_size
        if self.use_temporal_encoder and self.mamba_version == 2 and (self.mamba_expand * d) % self.mamba_head_dim:
            raise ConfigError(
                f"bad StormConfig: mamba_expand*hidden_size ({self.mamba_expand * d}) must divide by "
                f"mamba_head_dim ({self.mamba_head_dim})"
            )
        grid = self.grid_size
        if self.spatial_pool_mode == "average" and grid[0] % self.spatial_pool:
            raise ConfigError(f"bad StormConfig: token grid {grid} not divisible by spatial_pool={self.spatial_pool}")
        return self

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        # from_pretrained(path, temporal_pool=0) sets its keyword arguments after __init__ ran, so
        # validate again once they are in.
        out = super().from_dict(config_dict, **kwargs)
        (out[0] if isinstance(out, tuple) else out).validate()
        return out

    def with_overrides(self, overrides: dict, allow_fixed: bool = False, where: str = "StormConfig") -> StormConfig:
        """Apply `overrides` in place, refusing unknown keys and, unless `allow_fixed`, keys that
        the weights depend on; then validate."""
        check_overrides(overrides, where)
        fixed = sorted(k for k in overrides if FIELDS[k].changes == "fixed")
        if fixed and not allow_fixed:
            raise ConfigError(f"{where}: {fixed} shape the weights and cannot change on a trained model")
        for k, v in overrides.items():
            setattr(self, k, v)
        return self.validate()

    @property
    def patch_grid(self) -> int:
        return self.vision_config.image_size // self.vision_config.patch_size

    @property
    def grid_size(self) -> tuple[int, int]:
        """Token grid per frame after pixel shuffle (the patch grid is zero-padded up to a multiple
        of `downsample` first, as for SigLIP's 27x27 at 384 px)."""
        g = -(-self.patch_grid // self.downsample)
        return (g, g)

    @property
    def decode_resample(self) -> str:
        """How the decoder scales frames to the tower's input (`video.FrameSize`): a bicubic tower
        (SigLIP's processor) gets frames resized exactly as its processor does; the others get
        FFmpeg's area averaging while decoding, which the models trained here were trained on."""
        return "bicubic" if self.resample == "bicubic" else "area"

    def tokens_per_video(self, num_frames: int | None = None, temporal_sample: int | None = None) -> int:
        """Visual tokens the LLM reads for one video, the newline token included. The processor
        asks this to size the prompt; the model's reducer produces exactly this many, and the model
        checks it."""
        from .models.token_reduction import reduced_token_count

        return int(self.video_newline) + reduced_token_count(
            num_frames or self.num_frames,
            self.grid_size,
            self.temporal_pool,
            self.spatial_pool,
            temporal_sample or self.temporal_sample,
        )


StormConfig.__doc__ = f"""Configuration of a STORM model; every field, grouped:
{_field_docs()}
"""


def check_field(name: str, v, where: str = "bad StormConfig") -> None:
    """One field's type and range, from its entry in FIELDS."""
    f = FIELDS[name]
    if f.choices is not None:  # True == 1 in Python: the type must match too
        ok, want = v in f.choices and type(v) is type(f.choices[0]), f"one of {list(f.choices)}"
    elif isinstance(f.default, bool):
        ok, want = isinstance(v, bool), "true or false"
    elif isinstance(f.default, int):
        ok, want = isinstance(v, int) and not isinstance(v, bool) and v >= 1, POSITIVE_INT
    elif isinstance(f.default, tuple):
        ok = isinstance(v, (list, tuple)) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)
        want = "3 numbers"
    elif isinstance(f.default, str):
        ok, want = isinstance(v, str) and bool(v), "a non-empty string"
    else:
        return  # sub-configs and the token id: checked where they are built
    if not ok:
        raise ConfigError(f"{where}: {name} must be {want}, got {v!r}")


def check_overrides(overrides, where: str) -> None:
    """Keys and values of a dict of StormConfig overrides (a training config's `model.storm`)."""
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(overrides).__name__}")
    unknown = sorted(set(overrides) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(FIELDS)}")
    for k, v in overrides.items():
        check_field(k, v, where)


# A bare StormConfig() has the paper's shapes: SigLIP-so400m at 448 px / patch 14 (32x32 patches,
# 16x16 = 256 tokens per frame after the 2x2 shuffle) feeding Qwen2-7B.
PAPER_VISION = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                    image_size=448, patch_size=14)  # fmt: skip
PAPER_TEXT = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                  num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768, rope_theta=1e6)  # fmt: skip


def _sub_config(value, default_type: str):
    if value is None:
        if default_type == "siglip_vision_model":
            return SiglipVisionConfig(**PAPER_VISION)
        return AutoConfig.for_model(default_type, **PAPER_TEXT)
    if isinstance(value, dict):
        value = dict(value)
        try:
            return AutoConfig.for_model(value.pop("model_type", default_type), **value)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"bad StormConfig sub-config: {str(e).splitlines()[0]}") from None
    if not isinstance(value, PretrainedConfig):
        raise ConfigError(f"bad StormConfig: expected a config or a mapping, got {type(value).__name__}")
    return value


# Registered so transformers' Auto* loaders (AutoTokenizer reads config.json too) know the type.
AutoConfig.register("storm", StormConfig, exist_ok=True)
