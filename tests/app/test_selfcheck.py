"""The kernel self-check (``dawin-fast selfcheck``): every strategy and config against
the merged-weight reference with the repeat check, on toy shapes through the Triton
interpreter (fp16: the interpreter's bf16 dot is broken), and its command line."""

from __future__ import annotations

import json

import pytest
import torch

from dawin_fast import measured, use_backend, verify
from dawin_fast.app import selfcheck
from dawin_fast.app.cli import main

TOY = verify.selfcheck_cases({"toy": (64, 40)}, rows=20, tokens=5, dtypes=(torch.float16,),
                             models=(2,))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache; the quick check (after the strategy table) on the PyTorch path, as
    on a CPU without the interpreter (through it, its 300-row calls take minutes)."""
    monkeypatch.setenv(measured.ENV_CACHE_DIR, str(tmp_path))
    verify.clear(disk=False)
    real = selfcheck.quick_rows

    def quick(device):
        with use_backend("torch"):
            return real(device)

    monkeypatch.setattr(selfcheck, "quick_rows", quick)
    yield tmp_path
    verify.clear(disk=False)


def test_every_strategy_passes_on_toy_shapes(cache, tmp_path):
    lines = []
    report = tmp_path / "selfcheck.json"
    assert selfcheck.run("cpu", str(report), cases=TOY, out=lines.append) == 0
    data = json.loads(report.read_text())
    rows = data["strategies"]
    # one group and per-sample: each of the five strategies once per case
    assert sorted({r["strategy"] for r in rows}) == ["combine", "epilogue", "rowscaled",
                                                     "swapab", "wstat"]
    assert len(rows) == 2 * 5 and all(r["passed"] and r["repeatable"] for r in rows)
    assert all(0 < r["worst_err_over_bound"] < 1 for r in rows)
    assert data["failed"] == 0 and data["versions"] == measured.versions()
    assert lines[1] == selfcheck.TABLE_HEADER
    assert sum(line.endswith("  ok") for line in lines[2:12]) == 10
    assert "all checks passed" in lines


def test_a_wrong_kernel_fails_the_check(cache, tmp_path, monkeypatch):
    """A swap-AB that corrupts one k16 slice: its rows fail (bound), exit code 1, the JSON
    says which; the others pass."""
    real = verify.launch_kernel

    def corrupt(x, weight, coeffs, offsets, bias, strategy, config, out):
        real(x, weight, coeffs, offsets, bias, strategy, config, out)
        if strategy == "swapab":
            cut = x.clone()
            cut[:, 16:32] = 0
            wrong = torch.empty_like(out)
            real(cut, weight, coeffs, offsets, bias, strategy, config, wrong)
            out[:16, :16] = wrong[:16, :16]

    monkeypatch.setattr(verify, "launch_kernel", corrupt)
    lines = []
    report = tmp_path / "selfcheck.json"
    assert selfcheck.run("cpu", str(report), cases=TOY, out=lines.append) == 1
    rows = json.loads(report.read_text())["strategies"]
    failed = [r for r in rows if not r["passed"]]
    assert {r["strategy"] for r in failed} == {"swapab"} and len(failed) == 2
    assert all(r["reason"] == "bound" and r["worst_err_over_bound"] > 1 for r in failed)
    assert any("FAIL bound" in line and line.startswith("swapab") for line in lines)
    assert f"please send {report}" in lines[-2]


def test_selfcheck_on_cuda_without_a_gpu_is_one_line_and_exit_2(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["selfcheck", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "CUDA is not available on this machine" in err
