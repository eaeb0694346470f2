"""The benchmark command end to end at a tiny size: rows, ratios, profiles, JSON and the printed table."""

import json

import pytest

from fastfcn_hub.benchmark import D8_BASELINES, mmseg_available
from fastfcn_hub.cli import main


@pytest.mark.parity
@pytest.mark.skipif(not mmseg_available(), reason="needs mmsegmentation (the parity extra)")
def test_benchmark_beside_mmseg_and_d8_writes_json_and_table(tmp_path, capsys):
    output = tmp_path / "bench.json"
    argv = ["benchmark", "--variants", "fastfcn_r50_jpu_psp", "--sizes", "64x128", "--warmup", "0", "--repeats", "1",
            "--train", "--train-size", "64x64", "--profile", "--output", str(output)]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(output.read_text())
    rows = {(r["variant"], r["implementation"]): r for r in result["inference"]}
    baseline = D8_BASELINES["fastfcn_r50_jpu_psp"]
    assert set(rows) == {
        ("fastfcn_r50_jpu_psp", "mmseg"),
        ("fastfcn_r50_jpu_psp", "plain"),
        ("fastfcn_r50_jpu_psp", "optimized"),
        (baseline, "plain"),
        (baseline, "optimized"),
    }
    for implementation in ("plain", "optimized"):  # same weights as mmseg's model, so the same logits
        row = rows[("fastfcn_r50_jpu_psp", implementation)]
        assert row["max_abs_diff_vs_mmseg"] < 1e-4 and row["argmax_agreement_vs_mmseg"] > 0.99
    assert rows[(baseline, "plain")]["gflops"] > rows[("fastfcn_r50_jpu_psp", "plain")]["gflops"]
    assert all(r["latency_s"] > 0 and r["peak_memory_mib"] > 0 for r in rows.values())
    ratios = result["ratios"]
    assert {e["implementation"] for e in ratios["versus_mmseg"]} == {"plain", "optimized"}
    assert {e["implementation"] for e in ratios["jpu_versus_d8"]} == {"plain", "optimized"}
    assert {t["implementation"] for t in result["training"]} == {"mmseg", "plain"}
    assert ratios["training_versus_mmseg"][0]["step_time_ratio"] > 0
    profiled = {p["variant"]: {m["module"]: m for m in p["modules"]} for p in result["profiles"]}
    assert set(profiled) == {"fastfcn_r50_jpu_psp", baseline}
    jpu = profiled["fastfcn_r50_jpu_psp"]
    assert {"backbone", "neck", "decode_head", "decode_head.bottleneck"} <= set(jpu)
    assert "neck" not in profiled[baseline]
    parts = jpu["backbone"]["seconds"] + jpu["neck"]["seconds"] + jpu["decode_head"]["seconds"]
    assert parts <= jpu["(forward)"]["seconds"] * 1.05  # top-level modules are disjoint parts of the forward
    assert result["machine"]["matmul_gflops_per_s"]["fp32"] > 0 and result["machine"]["versions"]["torch"]
    table = capsys.readouterr().out
    assert "ours / mmseg" in table and "JPU vs D8" in table and "time by module" in table


def test_benchmark_rejects_bad_sizes(capsys):
    with pytest.raises(SystemExit):
        main(["benchmark", "--sizes", "512by1024"])
    assert "HEIGHTxWIDTH" in capsys.readouterr().err
