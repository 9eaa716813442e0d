import pytest

from stormvl.train.config import ConfigError, load_train_config


@pytest.mark.parametrize(
    "content,msg",
    [
        ('{"data": {"train": ["x.jsonl"]}, "optimiser": 1}', "unknown key"),
        ('{"data": {}}', "data.train"),
        ('{"data": {"train": ["x"]}, "stages": [{"train": "vision"}]}', "train must be"),
        ("{not json", "cannot parse"),
    ],
)
def test_bad_configs(tmp_path, content, msg):
    p = tmp_path / "c.json"
    p.write_text(content)
    with pytest.raises(ConfigError, match=msg):
        load_train_config(p)


def test_a_setting_added_since_a_run_started_does_not_block_resuming_it():
    from stormvl.train.trainer import _same_setting

    recorded = {"stages": [{"name": "sft", "steps": 5}], "seed": 0}  # written before `lora` existed
    assert _same_setting({"stages": [{"name": "sft", "steps": 5, "lora": None}], "seed": 0}, recorded)
    assert not _same_setting({"stages": [{"name": "sft", "steps": 5, "lora": {"r": 4}}], "seed": 0}, recorded)
    assert not _same_setting({"stages": [{"name": "sft", "steps": 6, "lora": None}], "seed": 0}, recorded)
    assert not _same_setting({"stages": [], "seed": 0}, recorded)
