from stormvl.bench.flops import llm_prefill_flops, temporal_flops, vision_flops
from stormvl.bench.settings import bench_config


def test_flop_formulas_scale_as_expected():
    cfg = bench_config("storm", "tiny")
    assert vision_flops(cfg, 16) == 2 * vision_flops(cfg, 8)
    assert temporal_flops(cfg, 16) > 1.9 * temporal_flops(cfg, 8)
    # attention makes prefill super-linear in tokens
    assert llm_prefill_flops(cfg, 200) > 2 * llm_prefill_flops(cfg, 100)
