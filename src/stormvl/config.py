"""StormConfig: one saved record of everything that shapes what the LLM sees, so evaluation reads
the same frame count, pooling and preprocessing that training used."""
from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig, SiglipVisionConfig


class StormConfig(PretrainedConfig):
    model_type = "storm"
    sub_configs = {"vision_config": AutoConfig, "text_config": AutoConfig}

    def __init__(
        self,
        vision_config=None,
        text_config=None,
        video_token: str = "<video>",
        video_token_id: int | None = None,
        projector_type: str = "linear",      # "linear" (STORM) or "mlp" (VILA baseline)
        downsample: int = 2,                 # pixel-shuffle factor before the projector
        use_temporal_encoder: bool = True,   # False = the VILA baseline in the same code path
        temporal_layers: int = 2,
        temporal_bidirectional: bool = True,
        temporal_merge: str = "add",
        mamba_state_size: int = 64,
        mamba_expand: int = 2,
        mamba_head_dim: int = 64,
        mamba_n_groups: int = 1,
        mamba_conv_kernel: int = 4,
        mamba_chunk_size: int = 64,
        temporal_pool: int = 1,              # k_t, training-based
        spatial_pool: int = 1,               # k_s, training-based
        temporal_sample: int = 1,            # s, test-time only
        num_frames: int = 32,
        image_mean=(0.5, 0.5, 0.5),
        image_std=(0.5, 0.5, 0.5),
        vision_batch_size: int = 32,         # frames per vision-tower call, bounds memory
        video_position: str = "before",      # the video placeholder before or after the question text
        choice_mode: str = "generate",       # multiple choice: "generate" a letter, or rank options by "likelihood"
        **kwargs,
    ):
        if isinstance(vision_config, dict):
            vision_config = dict(vision_config)
            vision_config = AutoConfig.for_model(vision_config.pop("model_type", "siglip_vision_model"), **vision_config)
        self.vision_config = vision_config if vision_config is not None else SiglipVisionConfig()
        if isinstance(text_config, dict):
            text_config = dict(text_config)
            text_config = AutoConfig.for_model(text_config.pop("model_type", "qwen2"), **text_config)
        if text_config is None:
            text_config = AutoConfig.for_model("qwen2")
        self.text_config = text_config
        self.video_token = video_token
        self.video_token_id = video_token_id
        self.projector_type = projector_type
        self.downsample = downsample
        self.use_temporal_encoder = use_temporal_encoder
        self.temporal_layers = temporal_layers
        self.temporal_bidirectional = temporal_bidirectional
        self.temporal_merge = temporal_merge
        self.mamba_state_size = mamba_state_size
        self.mamba_expand = mamba_expand
        self.mamba_head_dim = mamba_head_dim
        self.mamba_n_groups = mamba_n_groups
        self.mamba_conv_kernel = mamba_conv_kernel
        self.mamba_chunk_size = mamba_chunk_size
        self.temporal_pool = temporal_pool
        self.spatial_pool = spatial_pool
        self.temporal_sample = temporal_sample
        self.num_frames = num_frames
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.vision_batch_size = vision_batch_size
        self.video_position = video_position
        self.choice_mode = choice_mode
        super().__init__(**kwargs)
        self.validate()

    def validate(self):
        def need(ok, msg):
            if not ok:
                raise ValueError(f"bad StormConfig: {msg}")

        need(self.projector_type in ("linear", "mlp"), f"projector_type must be 'linear' or 'mlp', not {self.projector_type!r}")
        need(self.video_position in ("before", "after"), f"video_position must be 'before' or 'after', not {self.video_position!r}")
        need(self.choice_mode in ("generate", "likelihood"), f"choice_mode must be 'generate' or 'likelihood', not {self.choice_mode!r}")
        need(self.temporal_merge in ("add", "concat"), f"temporal_merge must be 'add' or 'concat', not {self.temporal_merge!r}")
        for name in ("downsample", "temporal_layers", "temporal_pool", "spatial_pool", "temporal_sample",
                     "num_frames", "vision_batch_size", "mamba_state_size", "mamba_expand",
                     "mamba_head_dim", "mamba_n_groups", "mamba_conv_kernel", "mamba_chunk_size"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, f"{name} must be an integer >= 1, got {v!r}")
        d = self.text_config.hidden_size
        if self.use_temporal_encoder:
            need((self.mamba_expand * d) % self.mamba_head_dim == 0,
                 f"mamba_expand*hidden_size ({self.mamba_expand * d}) must divide by mamba_head_dim ({self.mamba_head_dim})")
        grid = self.grid_size
        need(grid[0] % self.spatial_pool == 0, f"token grid {grid} not divisible by spatial_pool={self.spatial_pool}")
        need(len(self.image_mean) == 3 and len(self.image_std) == 3, "image_mean and image_std need 3 values")

    @property
    def patch_grid(self) -> int:
        return self.vision_config.image_size // self.vision_config.patch_size

    @property
    def grid_size(self) -> tuple[int, int]:
        """Token grid per frame after pixel shuffle (the patch grid is zero-padded up to a multiple
        of `downsample` first, as for SigLIP's 27x27 at 384 px)."""
        g = -(-self.patch_grid // self.downsample)
        return (g, g)

    def tokens_per_video(self, num_frames: int | None = None, temporal_sample: int | None = None) -> int:
        from .models.token_reduction import reduced_token_count

        return reduced_token_count(
            num_frames or self.num_frames, self.grid_size, self.temporal_pool, self.spatial_pool,
            temporal_sample or self.temporal_sample,
        )


# Registered so transformers' Auto* loaders (AutoTokenizer reads config.json too) know the type.
AutoConfig.register("storm", StormConfig, exist_ok=True)
