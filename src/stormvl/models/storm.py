"""StormForConditionalGeneration: vision tower -> pixel shuffle + projector -> temporal encoder ->
token reduction (-> LLaVA-OneVision's newline token) -> causal LM. With `use_temporal_encoder=False`
and an MLP projector it is the VILA baseline, so every comparison runs through this one code path."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from transformers import AutoModel, AutoModelForCausalLM, PreTrainedModel

from ..config import StormConfig
from ..errors import InputError, ModelFolderError, StormError, first_line
from . import lora
from .temporal_encoder import TemporalEncoder
from .token_reduction import reduce_tokens
from .vision import Projector, cut_vision_tower, pixel_shuffle, use_fast_gelu


class StormPreTrainedModel(PreTrainedModel):
    config_class = StormConfig
    base_model_prefix = "storm"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["TemporalEncoderLayer"]

    def _init_weights(self, module):
        # The vision tower and LLM initialise themselves; STORM's own modules use PyTorch's
        # defaults plus Mamba-2's SSM initialisation (done in their constructors).
        pass


class StormForConditionalGeneration(StormPreTrainedModel):
    def __init__(self, config: StormConfig):
        super().__init__(config)
        # Only patch tokens are used; SigLIP's pooling head would be dead weight (and unused
        # parameters break DDP). Set even when absent: older transformers build the head unless
        # the config says otherwise, and the saved folder would then not load in newer ones.
        if config.vision_config.model_type == "siglip_vision_model":
            config.vision_config.vision_use_head = False
        self.vision_tower = AutoModel.from_config(config.vision_config)
        if config.vision_feature_layer is not None:
            cut_vision_tower(self.vision_tower, config.vision_feature_layer)
        use_fast_gelu(self.vision_tower)
        d = config.text_config.hidden_size
        self.projector = Projector(config.vision_config.hidden_size * config.downsample**2, d, config.projector_type)
        self.temporal_encoder = None
        if config.use_temporal_encoder:
            self.temporal_encoder = TemporalEncoder(
                d,
                config.temporal_layers,
                bidirectional=config.temporal_bidirectional,
                merge=config.temporal_merge,
                state_size=config.mamba_state_size,
                expand=config.mamba_expand,
                head_dim=config.mamba_head_dim,
                n_groups=config.mamba_n_groups,
                conv_kernel=config.mamba_conv_kernel,
                chunk_size=config.mamba_chunk_size,
                version=config.mamba_version,
                dt_rank=config.mamba_dt_rank,
                mixer=config.temporal_mixer,
            )
            # Zero the residual branches' output so a fresh encoder starts as the identity: STORM
            # begins exactly where the baseline is and learns the temporal mixing on top.
            for layer in self.temporal_encoder.layers:
                for mixer in (layer.forward_mixer, getattr(layer, "backward_mixer", None)):
                    if mixer is not None:
                        nn.init.zeros_(mixer.out_proj.weight)
                        if mixer.out_proj.bias is not None:
                            nn.init.zeros_(mixer.out_proj.bias)
        self.video_newline = None
        if config.video_newline:
            # LLaVA-OneVision's initialisation of its image_newline.
            self.video_newline = nn.Parameter(torch.randn(d) / d**0.5)  # (D,)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.post_init()

    # -- plumbing expected of a transformers model -------------------------------------------
    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    # -- the encode path, one named method per stage ------------------------------------------
    # Every caller (answer, option scoring, training, evaluation, the bench) goes through these,
    # so the bench times exactly what `answer` runs.
    def get_frame_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Vision tower, pixel shuffle and projector: (F, 3, S, S) -> (F, N, D) tokens at the LLM
        width, N = grid_h * grid_w. Frames go through the tower `vision_batch_size` at a time."""
        cfg = self.config
        dtype = next(self.vision_tower.parameters()).dtype
        outs = []
        for chunk in pixel_values.split(cfg.vision_batch_size):
            hidden = self.vision_tower(pixel_values=chunk.to(dtype)).last_hidden_state  # (f, P, Dv)
            if cfg.vision_feature_select_strategy == "default":
                hidden = hidden[:, 1:]  # the CLS token is not a patch
            outs.append(pixel_shuffle(hidden, cfg.patch_grid, cfg.downsample))
        return self.projector(torch.cat(outs))  # (F, N, D)

    def get_temporal_features(self, x: torch.Tensor) -> torch.Tensor:
        """The Mamba temporal encoder over whole videos: (B, T, N, D) -> (B, T, N, D); the
        identity for the baseline without an encoder."""
        return x if self.temporal_encoder is None else self.temporal_encoder(x)

    def reduce_video_tokens(self, x: torch.Tensor, temporal_sample: int | None = None) -> torch.Tensor:
        """Token reduction: (B, T, N, D) -> (B, T', N', D), pooling from the config, then the
        test-time sampling stride (the config's when None)."""
        cfg = self.config
        s = cfg.temporal_sample if temporal_sample is None else temporal_sample
        return reduce_tokens(
            x,
            grid=cfg.grid_size,
            temporal_pool_k=cfg.temporal_pool,
            spatial_pool_k=cfg.spatial_pool,
            temporal_sample_s=s,
            spatial_mode=cfg.spatial_pool_mode,
        )

    def video_token_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """Reduced videos (B, T', N', D) -> the LLM's visual tokens (B, V, D), V =
        `config.tokens_per_video`: frames in order, then the newline token when the config has one."""
        b, t, n, d = x.shape
        x = x.reshape(b, t * n, d)
        if self.video_newline is not None:
            x = torch.cat([x, self.video_newline.to(x.dtype).expand(b, 1, d)], dim=1)
        return x

    def get_video_features(self, pixel_values_videos, temporal_sample: int | None = None) -> list[torch.Tensor]:
        """Videos as (B, T, 3, S, S) or a list of (T_i, 3, S, S) -> one (tokens_i, D) per video:
        the three stages above in order."""
        if torch.is_tensor(pixel_values_videos) and pixel_values_videos.dim() == 4:
            pixel_values_videos = pixel_values_videos[None]
        videos = list(pixel_values_videos)
        lengths = [v.shape[0] for v in videos]
        tokens = self.get_frame_features(torch.cat(videos)).split(lengths)
        return self.get_reduced_features(list(tokens), temporal_sample)

    def get_reduced_features(
        self, tokens: list[torch.Tensor], temporal_sample: int | None = None
    ) -> list[torch.Tensor]:
        """Each video's frame tokens (T_i, N, D), from `get_frame_features`, through the temporal
        encoder and the reduction: one (tokens_i, D) per video."""
        lengths = [t.shape[0] for t in tokens]
        out: list[torch.Tensor | None] = [None] * len(tokens)
        # Videos of equal length share one temporal-encoder call.
        by_len: dict[int, list[int]] = {}
        for i, t in enumerate(lengths):
            by_len.setdefault(t, []).append(i)
        for idx in by_len.values():
            x = torch.stack([tokens[i] for i in idx])  # (b, T, N, D)
            x = self.reduce_video_tokens(self.get_temporal_features(x), temporal_sample)  # (b, T', N', D)
            x = self.video_token_sequence(x)  # (b, V, D)
            for j, i in enumerate(idx):
                out[i] = x[j]
        return out

    def get_inputs_embeds(self, input_ids, pixel_values_videos=None, temporal_sample=None, video_features=None):
        """Token embeddings (B, L, D) with the video placeholders filled. `video_features`, one
        (tokens, D) per prompt from `get_video_features`, lets several prompts about one video
        share a single encoding. The placeholder count must equal the features' length."""
        vid = self.config.video_token_id
        mask = input_ids == vid  # (B, L)
        emb = self.get_input_embeddings()(input_ids.masked_fill(mask, 0))  # (B, L, D)
        if pixel_values_videos is None and video_features is None:
            if mask.any():
                raise InputError("the prompt has video tokens but no video was given")
            return emb
        if video_features is None:
            video_features = self.get_video_features(pixel_values_videos, temporal_sample)
        if torch.is_tensor(video_features):
            video_features = [video_features]
        # One video per prompt that has placeholders, in row order: check each row, so errors cannot
        # cancel out across a batch (text-only rows take no video).
        counts = mask.sum(1).tolist()
        have = counts if len(video_features) == len(counts) else [c for c in counts if c]
        want = [f.shape[0] for f in video_features]
        if len(have) != len(want):
            raise InputError(f"{len(have)} prompts have video tokens but {len(want)} videos were given")
        if have != want:
            raise InputError(
                f"the prompt has {have} video tokens but the video gives {want}: build batches with "
                "StormProcessor, which sizes the prompt for the model's frame count and token reduction"
            )
        feats = torch.cat(list(video_features))  # (sum of tokens, D), in row order
        return emb.masked_scatter(mask[..., None], feats.to(emb.dtype))

    # -- LLM side ------------------------------------------------------------------------------
    def forward(
        self,
        input_ids=None,
        pixel_values_videos=None,
        attention_mask=None,
        labels=None,
        inputs_embeds=None,
        temporal_sample=None,
        **kwargs,
    ):
        if inputs_embeds is None:
            inputs_embeds = self.get_inputs_embeds(input_ids, pixel_values_videos, temporal_sample)
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids, pixel_values_videos=None, attention_mask=None, temporal_sample=None, **kwargs):
        """Returns only the newly generated token ids (the prompt is passed as embeddings)."""
        emb = self.get_inputs_embeds(input_ids, pixel_values_videos, temporal_sample)
        kwargs.setdefault("pad_token_id", self.config.text_config.pad_token_id or self.config.text_config.eos_token_id)
        return self.language_model.generate(inputs_embeds=emb, attention_mask=attention_mask, **kwargs)

    @classmethod
    def from_folder(cls, path, **kwargs) -> StormForConditionalGeneration:
        """`from_pretrained` on a saved STORM folder, safetensors only, where every weight must be
        present and of the saved shape: a folder that does not fit the model is a ModelFolderError,
        never a model answering from freshly initialised weights."""
        from safetensors import SafetensorError

        try:
            model, info = cls.from_pretrained(path, use_safetensors=True, output_loading_info=True, **kwargs)
        except StormError:  # a bad config.json value, already a one-line error
            raise
        except (OSError, SafetensorError, RuntimeError, ValueError) as e:  # damaged or mismatched files
            raise ModelFolderError(f"{path}: cannot load the model ({first_line(e)})") from None
        for what in ("missing_keys", "unexpected_keys", "mismatched_keys"):
            keys = sorted(str(k) for k in info.get(what) or ())
            if keys:
                name = what.replace("_keys", "")
                raise ModelFolderError(f"{path}: the weights do not fit the model ({len(keys)} {name}: {keys[:3]})")
        if (Path(path) / lora.ADAPTER_DIR).is_dir():
            try:
                lora.load_adapter(model, path)
            except (OSError, SafetensorError, ValueError, KeyError) as e:
                raise ModelFolderError(f"{path}: cannot load its LoRA adapter ({first_line(e)})") from None
        return model

    def save_pretrained(self, save_directory, *args, state_dict=None, **kwargs):
        """With LoRA adapters: the base weights under their plain names, the adapter in `adapter/`."""
        if not lora.has_lora(self):
            return super().save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)
        state = lora.base_state_dict(state_dict if state_dict is not None else self.state_dict())
        super().save_pretrained(save_directory, *args, state_dict=state, **kwargs)
        lora.save_adapter(self, save_directory)

    # -- building from separately trained parts -------------------------------------------------
    @classmethod
    def from_parts(cls, vision_path, llm_path, tokenizer=None, **storm_kwargs):
        """A new STORM model from a local vision-tower folder (a SigLIP vision model, or a full
        SigLIP model whose vision half is used) and a local causal-LM folder. Returns
        (model, tokenizer) with the video token added to the tokenizer and embeddings."""
        from transformers import AutoConfig, AutoTokenizer

        vcfg = AutoConfig.from_pretrained(vision_path, local_files_only=True)
        if hasattr(vcfg, "vision_config"):
            from transformers import SiglipVisionModel

            vision = SiglipVisionModel.from_pretrained(vision_path, local_files_only=True, use_safetensors=True)
        else:
            vision = AutoModel.from_pretrained(vision_path, local_files_only=True, use_safetensors=True)
        lm = AutoModelForCausalLM.from_pretrained(llm_path, local_files_only=True, use_safetensors=True)
        tok = tokenizer or AutoTokenizer.from_pretrained(llm_path, local_files_only=True)
        video_token = storm_kwargs.pop("video_token", "<video>")
        tok.add_special_tokens({"additional_special_tokens": [video_token]})
        if len(tok) > lm.get_input_embeddings().num_embeddings:
            lm.resize_token_embeddings(len(tok))
        config = StormConfig(
            vision_config=vision.config.to_dict(),
            text_config=lm.config.to_dict(),
            video_token=video_token,
            video_token_id=tok.convert_tokens_to_ids(video_token),
            **storm_kwargs,
        )
        model = cls(config)
        vision_state = {k: v for k, v in vision.state_dict().items() if "head" not in k.split(".")}
        model.vision_tower.load_state_dict(vision_state)
        model.language_model.load_state_dict(lm.state_dict())
        return model, tok
