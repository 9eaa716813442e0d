import math
from pathlib import Path

import pytest

from stormvl.cli import main
from stormvl.config import StormConfig
from stormvl.errors import InputError
from stormvl.token_budget import MAX_SAMPLE, plan_budget

CLIP = str(Path(__file__).resolve().parents[1] / "examples" / "clip.mp4")


def _formula(cfg, frames, s):
    """The README's: ceil(ceil(T / k_t) / s) * (h / k_s) * (w / k_s)."""
    gh, gw = cfg.grid_size
    return math.ceil(math.ceil(frames / cfg.temporal_pool) / s) * (gh // cfg.spatial_pool) * (gw // cfg.spatial_pool)


@pytest.mark.parametrize("pool,spatial", [(1, 1), (4, 2), (2, 1), (3, 2)])
def test_plans_never_exceed_the_budget_and_use_it_well(pool, spatial):
    cfg = StormConfig(temporal_pool=pool, spatial_pool=spatial)
    per = (cfg.grid_size[0] // spatial) * (cfg.grid_size[1] // spatial)
    for budget in [per, per + 1, 2 * per, 1000, 4096, 10**6]:
        for frames in [None, 16, 64]:
            for s in [None, 1, 2]:
                try:
                    p = plan_budget(cfg, budget, num_frames=frames, temporal_sample=s)
                except InputError:
                    assert frames is not None  # only a fixed frame count can be impossible
                    assert _formula(cfg, frames, s or MAX_SAMPLE) > budget
                    continue
                assert p.visual_tokens == _formula(cfg, p.num_frames, p.temporal_sample) <= budget
                if frames is not None:
                    assert p.num_frames == frames
                    if s is None:  # the smallest stride that fits
                        assert p.temporal_sample == 1 or _formula(cfg, frames, p.temporal_sample - 1) > budget
                else:  # the most frames that fit (up to the frame cap)
                    assert p.num_frames == 4096 or _formula(cfg, p.num_frames + 1, p.temporal_sample) > budget


def test_the_video_caps_the_frames_and_impossible_budgets_say_why():
    cfg = StormConfig(temporal_pool=4, spatial_pool=2)
    assert plan_budget(cfg, 10**6, video_frames=300).num_frames == 300
    with pytest.raises(InputError, match="below one frame's 64 tokens"):
        plan_budget(cfg, 63)
    with pytest.raises(InputError, match="read at most"):
        plan_budget(cfg, 64, num_frames=1000)
    with pytest.raises(InputError, match="integer >= 1"):
        plan_budget(cfg, 0)


def test_plan_command(capsys):
    assert main(["plan", CLIP, "--max-visual-tokens", "8", "--frames", "16"]) == 0
    out = capsys.readouterr().out
    assert "16 frames, temporal sampling 2 -> 8 visual tokens" in out
    assert "LLM prefill" in out and "temporal encoder" in out
    assert main(["plan", CLIP, "--max-visual-tokens", "3", "--no-estimate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "smallest budget is 4" in err[0]
