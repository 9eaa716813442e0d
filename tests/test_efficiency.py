import json

import torch

from stormvl.cli import main
from stormvl.bench.flops import llm_prefill_flops, temporal_flops, vision_flops
from stormvl.bench.memory import PeakMemory
from stormvl.bench.run import run_bench
from stormvl.bench.settings import bench_config


def test_peak_memory_counts_live_tensors_exactly():
    mib = 2 ** 20
    keep = torch.ones(mib // 4)  # allocated before the block: not counted
    with PeakMemory(torch.device("cpu")) as mem:
        a = torch.zeros(2 * mib // 4)      # 2 MiB live
        b = a + 1                          # 4 MiB live
        v = b[:10]                         # a view: no new storage
        w = keep.view(2, -1).t()           # a view of a tensor made before the block: nothing
        del a
        c = torch.zeros(3 * mib // 4)      # 2 + 3 = 5 MiB live: the peak
        del b, v, w, c
        d = torch.zeros(mib // 4)          # 1 MiB: below the peak
    assert mem.peak == 5 * mib
    # A second block after the memory was freed still sees its own allocations (RSS would not).
    with PeakMemory(torch.device("cpu")) as again:
        e = keep * 2
    assert again.peak == mib
    del d, e


def test_bench_rows_token_counts_and_ratios():
    rows = run_bench(frame_counts=(8,), size="tiny", repeats=1, warmup=0, new_tokens=2, progress=False)
    by = {r["setting"]: r for r in rows}
    base = by["baseline"]["llm_visual_tokens"]
    assert base == 8 * 4  # 56 px / patch 14 = 4x4 patches -> 2x2 tokens per frame
    assert by["storm+tpool4"]["token_reduction_x"] == 4.0
    assert by["storm+tpool4+tsample2"]["token_reduction_x"] == 8.0
    assert by["storm+tpool4+spool2"]["token_reduction_x"] == 16.0
    assert by["baseline"]["gflops"]["temporal"] == 0 and by["storm"]["gflops"]["temporal"] > 0
    for r in rows:
        assert r["ttft_s"] > 0 and r["seconds"]["per_token"] > 0 and 0 <= r["temporal_share"] < 1
        assert r["peak_mem_mib"] > 0


def test_flop_formulas_scale_as_expected():
    cfg = bench_config("storm", "tiny")
    assert vision_flops(cfg, 16) == 2 * vision_flops(cfg, 8)
    assert temporal_flops(cfg, 16) > 1.9 * temporal_flops(cfg, 8)
    # attention makes prefill super-linear in tokens
    assert llm_prefill_flops(cfg, 200) > 2 * llm_prefill_flops(cfg, 100)


def test_bench_cli_writes_outputs(tmp_path):
    assert main(["bench", "--size", "tiny", "--frames", "8", "--repeats", "1", "--warmup", "0",
                 "--settings", "storm+tpool4", "--out", str(tmp_path)]) == 0
    data = json.load(open(tmp_path / "bench.json"))
    assert {r["setting"] for r in data["rows"]} == {"baseline", "storm+tpool4"}
    assert (tmp_path / "bench.md").read_text().startswith("| frames")
    assert main(["bench", "--settings", "nope", "--out", str(tmp_path)]) == 2
