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


def test_a_setting_too_slow_for_the_next_frame_count_is_reported_not_run():
    from stormvl.bench.report import format_table

    rows = run_bench(
        frame_counts=(16, 4), settings=("baseline", "storm+tpool4"), size="tiny", repeats=1, warmup=0,
        new_tokens=1, progress=False, max_pass_s=1e-9,
    )  # fmt: skip
    # Frame counts run in ascending order; at 4 frames everything runs (nothing to predict from),
    # at 16 every setting's predicted pass is over the limit.
    assert [(r["frames"], r["setting"], "skipped" in r) for r in rows] == [
        (4, "baseline", False), (4, "storm+tpool4", False), (16, "baseline", True), (16, "storm+tpool4", True),
    ]  # fmt: skip
    assert "over --max-seconds" in rows[2]["skipped"] and rows[3]["llm_visual_tokens"] == 16 * 4 // 4
    table = format_table(rows).splitlines()
    assert len({line.count("|") for line in table}) == 1  # every row has every column
    assert "not run: one pass would take about" in table[-1]


def test_predicted_cost_grows_linearly_for_encoding_and_quadratically_for_the_llm():
    from stormvl.bench.run import predicted_cost

    prev = {"frames": 8, "seconds": {"vision": 1.0, "temporal": 0.5, "reduction": 0.5, "prefill": 2.0},
            "peak_mem_mib": 100.0}  # fmt: skip
    assert predicted_cost(prev, 16) == (2.0 * 2 + 2.0 * 4, 400.0)
