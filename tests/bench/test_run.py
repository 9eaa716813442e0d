from stormvl.bench.run import run_bench


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
