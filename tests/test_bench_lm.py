"""The LM layer benchmark cases (Llama-3-8B prefill and decode) and their traffic-model
predictions: shapes as specified, the harness runs the toy layout, the CLI prints both."""

from __future__ import annotations

import pytest

from dawin_fast.app.cli import main
from dawin_fast.bench import layers as bench


def test_llama_shapes_and_layout():
    cases = bench.lm_cases()
    shapes = {(c.layer, c.in_features, c.out_features) for c in cases}
    assert shapes == {("qkv", 4096, 6144), ("o_proj", 4096, 4096),
                      ("gate_up_proj", 4096, 14336), ("down_proj", 14336, 4096)}
    qkv = [c for c in cases if c.layer == "qkv"]
    groups = [bench.group_lengths(c.pattern, c.images, c.tokens) for c in qkv]
    assert groups[0] == [2048] and groups[1] == [512] * 8  # prefill
    assert [len(g) for g in groups[2:]] == list(bench.DECODE_GROUPS)  # decode
    assert all(g == [1] * len(g) for g in groups[2:])
    assert all(c.target is None for c in cases)  # no performance target (P1-P6) is about LMs
    assert len({c.id for c in cases}) == len(cases)


def test_predictions_come_from_the_traffic_model():
    from dawin_fast.kernels import cost_model

    records = bench.lm_predictions()
    assert len(records) == len(bench.lm_cases())
    decode = next(r for r in records if r["case"] == "Llama-3-8B-down_proj-per_sample-M2-64x1")
    case = cost_model.Case("", (1,), 2, 4096, 14336, repeat=64)
    assert decode["cublas_s"] == cost_model.cublas(case).seconds
    assert decode["epilogue_s"] == cost_model.best(case)["epilogue"][1].seconds
    assert decode["weights_gb"] == pytest.approx(2 * 4096 * 14336 * 2 / 1e9)
    table = bench.render_lm_predictions(records)
    assert "not measured" in table and table.count("| Llama-3-8B-") == len(records)


def test_cli_lm_suite(tmp_path, capsys):
    output = tmp_path / "lm.md"
    assert main(["bench", "--suite", "lm", "--methods", "premerged", "materialize_loop",
                 "--filter", "qkv", "--output", str(output)]) == 0
    table = output.read_text()
    capsys.readouterr()
    assert "### toy-lm-qkv-per_sample-M2-8x1" in table and "| fused |" in table
    assert "Traffic-model predictions" in table and "| Llama-3-8B-qkv-one_group" in table
    assert "down_proj" not in table
