import json

import pytest

from stormvl.config import FIELDS, TRANSFORMERS_KEYS, StormConfig
from stormvl.errors import ConfigError
from stormvl.testing import tiny_config


def test_bad_config_is_rejected(tiny_tokenizer):
    with pytest.raises(ValueError, match="projector_type"):
        tiny_config(tiny_tokenizer, projector_type="transformer")
    with pytest.raises(ValueError, match="temporal_pool"):
        tiny_config(tiny_tokenizer, temporal_pool=0)
    with pytest.raises(ValueError, match="spatial_pool"):
        tiny_config(tiny_tokenizer, spatial_pool=3)


@pytest.mark.parametrize(
    "key,value,msg",
    [
        ("temporal_pool", "4", "temporal_pool must be an integer >= 1"),
        ("use_temporal_encoder", "yes", "use_temporal_encoder must be true or false"),
        ("image_mean", [0.5, 0.5], "image_mean must be 3 numbers"),
        ("video_position", "middle", "video_position must be one of"),
        ("video_token", "", "video_token must be a non-empty string"),
        ("mamba_version", 3, "mamba_version must be one of"),
        ("mamba_version", True, "mamba_version must be one of"),
        ("mamba_dt_rank", 0, "mamba_dt_rank must be None or"),
    ],
)
def test_wrong_value_types_are_config_errors(key, value, msg):
    with pytest.raises(ConfigError, match=msg):
        StormConfig(**{key: value})


def test_unknown_keys_are_refused_with_the_known_ones_listed(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['temporal_pol'\]; known: \[.*'temporal_pool'"):
        StormConfig(temporal_pol=4)
    # ... also in a saved config.json, where PretrainedConfig would keep it as an attribute.
    StormConfig(temporal_pool=4).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert StormConfig.from_pretrained(tmp_path).temporal_pool == 4
    data["spatial_pol"] = 2
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="spatial_pol"):
        StormConfig.from_pretrained(tmp_path)


def test_every_attribute_is_a_documented_field():
    # What a saved config holds beyond transformers' own keys is exactly the documented fields.
    assert set(StormConfig().to_dict()) - TRANSFORMERS_KEYS == set(FIELDS)
    for name, f in FIELDS.items():
        assert f.group in ("vision", "language model", "temporal encoder", "reduction", "prompting", "preprocessing")
        assert f.changes in ("fixed", "training", "any") and f.doc
        assert f"{name} (default {f.default!r}; changes: {f.changes})" in StormConfig.__doc__


def test_overrides_refuse_unknown_and_weight_shaping_keys():
    cfg = StormConfig()
    assert cfg.with_overrides({"temporal_pool": 4, "choice_mode": "likelihood"}).temporal_pool == 4
    with pytest.raises(ConfigError, match="temporal_pol"):
        cfg.with_overrides({"temporal_pol": 4})
    with pytest.raises(ConfigError, match=r"\['mamba_state_size'\] shape the weights"):
        cfg.with_overrides({"mamba_state_size": 16})
    with pytest.raises(ConfigError, match="temporal_sample must be an integer"):
        cfg.with_overrides({"temporal_sample": 0})
    assert cfg.temporal_sample == 1


def test_from_pretrained_keyword_overrides_are_validated(tmp_path):
    StormConfig().save_pretrained(tmp_path)
    assert StormConfig.from_pretrained(tmp_path, temporal_pool=4).temporal_pool == 4
    with pytest.raises(ConfigError, match="temporal_pool must be"):
        StormConfig.from_pretrained(tmp_path, temporal_pool=0)


def test_bare_config_has_the_papers_shapes():
    c = StormConfig()
    assert (c.vision_config.image_size, c.vision_config.patch_size, c.vision_config.hidden_size) == (448, 14, 1152)
    assert c.text_config.hidden_size == 3584 and c.text_config.num_hidden_layers == 28  # Qwen2-7B
    assert c.grid_size == (16, 16)  # 32x32 patches, 2x2 pixel shuffle
    assert c.tokens_per_video(32) == 8192  # the paper's 8K visual-token budget at 32 frames


def test_llava_onevision_fields_count_the_newline_and_ceil_the_bilinear_grid(tiny_tokenizer):
    # The tiny grid is 4x4: average pooling by 3 is refused, bilinear pooling makes it 2x2.
    c = tiny_config(tiny_tokenizer, spatial_pool=3, spatial_pool_mode="bilinear", video_newline=True)
    assert c.tokens_per_video(8) == 8 * 2 * 2 + 1 and c.tokens_per_video(8, 2) == 4 * 2 * 2 + 1
    assert StormConfig().tokens_per_video(32) == 8192  # the paper's path unchanged: no newline
    with pytest.raises(ConfigError, match="vision_feature_layer must be None or an integer"):
        StormConfig(vision_feature_layer="penultimate")
    with pytest.raises(ConfigError, match="spatial_pool_mode must be one of"):
        StormConfig(spatial_pool_mode="max")
