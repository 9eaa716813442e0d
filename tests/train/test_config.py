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
