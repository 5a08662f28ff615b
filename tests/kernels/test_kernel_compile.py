"""The compile gate: every kernel variant compiled for sm_90a as a real launch compiles it.

The interpreter never compiles a kernel, so what the H100 runs is checked here, on a CPU:
``dawin_fast.kernel_tools.compile_gate`` compiles every variant the kernel modules register
(combine and rowscaled; the Gluon swap-AB kernel, its twin and the epilogue-scaled kernel;
the weight-stationary kernel and its twin), through Triton's own launch path and
specialization, every config autotune or dispatch may pick, and fails on shared memory
over the H100 limit, spills or local memory, mma.sync/FMA instead of wgmma, ptxas
serialization or warnings, a shared-memory model that disagrees with the compiled size,
and where a kernel asks for them: wgmma's A operand not in registers, a main-loop wait
depth of 0, loads without TMA. It also runs
under every Triton named in ``DAWIN_GATE_TRITONS`` (CI: the H100's 3.6.0).

The committed table (``kernels/compiled.json`` / ``compiled.md``) must match what the
gate compiles now: regenerate it with ``python -m dawin_fast.kernel_tools.compile_gate --write``.
"""

from __future__ import annotations

import importlib
import json
import os

import pytest
import torch

from dawin_fast.kernel_tools import compile_gate as gate
from dawin_fast.kernels import arch, configs
from dawin_fast.kernels.fused_configs import (
    EPILOGUE_CONFIGS,
    SWAPAB_CONFIGS,
    WSTAT_CONFIGS,
    fits,
    gluon_smem_bytes,
)

im = importlib.import_module("dawin_fast.kernels.interp_matmul")


@pytest.fixture(scope="module")
def report():
    # sm_80/sm_89 sampled (one call per kernel, config and dtype): every target's
    # configs, at ~1/4 of their full cost (the committed table has every call).
    return gate.run_gate(sample_extra=True)


def test_every_variant_passes_the_gate(report):
    bad = gate.failures(report)
    assert not bad, "compile gate failures:\n" + "\n".join(bad)


def test_the_gate_covers_every_kernel_config_dtype_and_m(report):
    """Combine and rowscaled, bf16 and fp16, M in {2, 8, 16, 32}, one group and
    many, on the installed Triton. Every config of the Gluon swap-AB kernel, its twin and
    the epilogue kernel, bf16 and fp16, up to M = 32, on every Triton gated (3.6 too);
    the Gluon kernel held to register-A wgmma, all three to a main-loop wait >= 1 (the
    twin's allowed with a reason)."""
    rows = next(iter(report["tritons"].values()))
    cases = {(r["kernel"], r["case"]) for r in rows}
    for kernel in ("combine", "rowscaled"):  # the autotuned kernels
        for dtype in ("bfloat16", "float16"):
            for num_models in (2, 8, 16, 32):
                for grouping in im._GATE_GROUPINGS:
                    assert (kernel, f"{dtype} M={num_models}, {grouping}") in cases
    new_kernels = {"swapab (Gluon)": [c.name for c in SWAPAB_CONFIGS],
                   "swapab twin": [c.name for c in SWAPAB_CONFIGS],
                   "epilogue": [c.name for c in EPILOGUE_CONFIGS]}
    for version, rows in report["tritons"].items():
        if rows and gate.row_arch(rows[0]) != arch.HOPPER:
            continue  # sm_80/sm_89: test_every_target_is_gated_with_its_own_limit_and_mma
        for kernel, names in new_kernels.items():
            for name in names:
                mine = [r for r in rows if (r["kernel"], r["config"]) == (kernel, name)]
                assert {r["case"].split()[0] for r in mine} >= {"bfloat16", "float16"}, \
                    (version, kernel, name)
                assert max(int(r["case"].split("M=")[1].split(",")[0]) for r in mine) == 32
                assert all("wait" in r["checks"] for r in mine)
                if kernel == "swapab (Gluon)":
                    assert all({"a_regs", "tma", "model"} <= set(r["checks"]) for r in mine)
    # The weight-stationary Gluon kernel, every config, bf16 and fp16 up to M = 32
    # on every Triton gated, with both wgmma operands in shared memory (no register A
    # operand, so no register-A hazard), TMA loads and its shared-memory model; its twin.
    for version, rows in report["tritons"].items():
        if rows and gate.row_arch(rows[0]) != arch.HOPPER:
            continue  # Gluon is sm_90a only; the twin off Hopper: the test below
        for cfg in WSTAT_CONFIGS:
            mine = [r for r in rows if (r["kernel"], r["config"]) == ("wstat (Gluon)", cfg.name)]
            assert {r["case"].split()[0] for r in mine} >= {"bfloat16", "float16"}, version
            assert max(int(r["case"].split("M=")[1].split(",")[0]) for r in mine) == 32
            assert all(r["a_operand"] == "shared" for r in mine), (version, cfg.name)
            assert all({"wait", "tma", "model"} <= set(r["checks"]) for r in mine)
            assert any(r["kernel"] == "wstat twin" and r["config"] == cfg.name for r in rows)
    assert all(report["tritons"].values())


def test_the_committed_table_is_current(report):
    committed = gate.comparable(json.loads(gate.JSON_PATH.read_text()))
    fresh = gate.comparable(report)
    for version, rows in fresh.items():
        assert version in committed, f"compiled.json has no Triton {version}: {gate.COMMAND}"
        if version in report.get("sampled", []):  # the sample's rows, as in the table
            built = {(r["kernel"], r["case"], r["config"]) for r in rows}
            committed[version] = [r for r in committed[version]
                                  if (r["kernel"], r["case"], r["config"]) in built]
        assert committed[version] == rows, (
            f"kernels/compiled.json is stale for Triton {version}: run {gate.COMMAND}")
    assert gate.render_markdown(json.loads(gate.JSON_PATH.read_text())) == \
        gate.MD_PATH.read_text(), "compiled.md is not rendered from compiled.json"


def test_every_target_is_gated_with_its_own_limit_and_mma(report):
    """sm_80 (A100) and sm_89 (Ada) beside sm_90a, each against its own limit,
    mma.sync there instead of wgmma, every non-Hopper-only kernel and config on each, and
    the Gluon/TMA variants on sm_90a only."""
    labels = {gate.row_arch(rows[0]).name: label
              for label, rows in report["tritons"].items() if rows}
    assert set(labels) == set(arch.ARCHES)
    hopper = {(r["kernel"], r["config"], gate.sample_key(r)[2])
              for r in report["tritons"][labels["sm_90a"]]}
    for name in ("sm_80", "sm_89"):
        target = arch.ARCHES[name]
        rows = report["tritons"][labels[name]]
        assert report["targets"][name] == target.smem_limit
        assert all(r["target"] == name for r in rows if not r.get("error"))
        assert all(r["shared"] <= target.smem_limit for r in rows if not r.get("error"))
        assert all(r.get("mma") == "mma.sync" or "wgmma" in r["allow"] for r in rows)
        assert not any(r["kernel"] == "swapab (Gluon)" or "tma" in r["checks"] for r in rows)
        kernels = {r["kernel"] for r in rows}
        assert kernels == {"combine", "rowscaled", "swapab twin", "epilogue", "wstat twin"}
        # Every (kernel, config, dtype) of sm_90a that fits this target is built here.
        built = {(r["kernel"], r["config"], gate.sample_key(r)[2]) for r in rows}
        assert {k for k in hopper if k[0] in ("swapab twin", "wstat twin")} <= built


def test_rows_are_judged_by_their_own_target():
    ada = dict(arch="sm_89", target="sm_89", mma="mma.sync")
    assert gate.failed_checks(unit(**ada)) == {}
    assert "smem" in gate.failed_checks(unit(**ada, shared=110000, model_shared=110000))
    assert gate.failed_checks(unit(shared=110000, model_shared=110000)) == {}  # sm_90a
    assert "wgmma" in gate.failed_checks(unit(**{**ada, "mma": "wgmma"}))
    assert "compiles" in gate.failed_checks(unit(**{**ada, "target": "sm_90a"}))


def test_hopper_only_variants_are_gated_on_sm90a_only():
    variants = list(gate.discover("swapab (Gluon)"))
    assert variants and all(gate.variant_archs(v) == ("sm_90a",) for v in variants)
    old = next(iter(gate.discover("rowscaled bfloat16 M=2")))
    assert gate.variant_archs(old) == tuple(arch.ARCHES)


def test_the_gpu_machines_triton_is_gated(request):
    if not os.environ.get("DAWIN_GATE_TRITONS"):
        pytest.skip("set DAWIN_GATE_TRITONS to a Triton 3.6 install (PYTHONPATH dir) to gate "
                    "the H100's version too; CI does")
    report = request.getfixturevalue("report")
    assert any(v.startswith("3.6") for v in report["tritons"]), list(report["tritons"])


# ----------------------------------------------------------------------- the checks


def unit(**changes):
    """A compiled unit that passes every check; ``changes`` introduce one defect."""
    row = dict(kernel="k", case="c", config="c0", tiles="-", error=None, target="sm_90a",
               mma="wgmma", a_operand="registers", wait=1, regs=128, spill_stores=0,
               spill_loads=0, stack=0, serialized=[], warnings=[], shared=1024,
               model_shared=1024, cp_async=0, tma=4, a_hazard=0, a_hazard_first=None,
               checks=[*gate.DEFAULT_CHECKS, "model_bound", "model", "wait", "a_regs", "tma"],
               allow={})
    row.update(changes)
    return row


DEFECTS = {  # check -> (defect, ...): each must fail that check
    "smem": [dict(shared=configs.SHARED_MEMORY_LIMIT + 1024,
                  model_shared=configs.SHARED_MEMORY_LIMIT + 1024),
             dict(arch="sm_80", target="sm_80", mma="mma.sync",
                  shared=arch.AMPERE.smem_limit + 1024,
                  model_shared=arch.AMPERE.smem_limit + 1024)],
    "spill": [dict(spill_stores=96, spill_loads=96), dict(stack=16)],  # stack: local memory
    "wgmma": [dict(mma="mma.sync"), dict(mma="none"),
              dict(arch="sm_89", target="sm_89", mma="none")],
    "serial": [dict(serialized=["C7515"])],
    "warn": [dict(warnings=["ptxas warning : Value of threads per SM ... ignored"])],
    "model": [dict(model_shared=2048), dict(model_shared=512),
              dict(model_shared=512, model_slack=256)],
    "model_bound": [dict(model_shared=512), dict(model_shared=512, model_slack=256)],
    "wait": [dict(wait=0), dict(wait=None)],
    "a_regs": [dict(a_operand="shared"), dict(a_operand=None)],
    "tma": [dict(tma=0, cp_async=8)],
    "compiles": [dict(error="CompilationError: boom"), dict(target="sm_90")],
    "a_hazard": [dict(a_hazard=2, a_hazard_first="k: /*19a0*/ FMUL R97, ... writes R97"),
                 dict(a_hazard=None)],  # None: the SASS was not analysed
}
CASES = [(check, i) for check, defects in DEFECTS.items() for i in range(len(defects))]


def test_every_check_has_a_defect():
    assert set(DEFECTS) == set(gate.CHECKS)


def test_model_slack_admits_what_it_says():
    """A model with slack passes while the compiled size lies in [model, model + slack]."""
    for shared in (1024, 1024 + 300, 1024 + 512):
        assert gate.failed_checks(unit(shared=shared, model_slack=512)) == {}
    assert "model" in gate.failed_checks(unit(shared=1023, model_slack=512))


@pytest.mark.parametrize("check,index", CASES)
def test_each_defect_fails_its_check(check, index):
    assert gate.failed_checks(unit()) == {}
    row = unit(**DEFECTS[check][index])
    assert check in gate.failed_checks(row)
    assert gate.failures({"tritons": {"3.8.0": [row]}})
    allowed = unit(**DEFECTS[check][index], allow={check: "a written reason"})
    others = set(gate.failed_checks(allowed)) - {check}
    if not others:
        assert not gate.failures({"tritons": {"3.8.0": [allowed]}})


def test_unknown_checks_are_refused():
    with pytest.raises(ValueError, match="unknown checks"):
        gate.Variant(kernel="k", case="c", fn=None, args=(), kwargs={}, allow={"fast": "x"})


PTX = """
.visible .entry k(
{
$L__BB0_1:
\twgmma.wait_group.sync.aligned 0;
$L__BB0_2:
\twgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%f1, %f2}, {%r1, %r2}, %rd3, p, 1, 1, 1;
\twgmma.wait_group.sync.aligned 1;
\t@%p1 bra $L__BB0_2;
\tbra.uni $L__BB0_1;
\twgmma.wait_group.sync.aligned 0;
}
"""


def test_ptx_analysis_reads_the_main_loop():
    """The wait depth comes from the innermost loop with the most wgmma, not the outer
    loop's or the epilogue's wait 0; the A operand from the instruction's operands."""
    assert gate.ptx_loops(PTX) == [(5, 8), (3, 9)]
    assert gate.main_loop_wait(PTX) == 1
    result = gate.analyze(PTX, "ptxas info    : Used 90 registers\n"
                               "    0 bytes stack frame, 8 bytes spill stores, 4 bytes spill "
                               "loads\nptxas info    : (C7515) Potential Performance Loss: "
                               "wgmma.mma_async instructions are serialized due to ...")
    assert result["mma"] == "wgmma" and result["a_operand"] == "registers"
    assert (result["regs"], result["spill_stores"], result["spill_loads"]) == (90, 8, 4)
    assert result["serialized"] == ["C7515"]
    shared_a = PTX.replace("{%r1, %r2}", "%rd2")
    assert gate.analyze(shared_a, "")["a_operand"] == "shared"
    assert gate.analyze("mma.sync.aligned.m16n8k16", "")["mma"] == "mma.sync"


# Loops as LLVM lays them out: a plain one, a rotated one (latch block first), and the
# plain one serialized.
_PIPELINED = """
.target sm_90a
$L__BB0_1:
\twgmma.fence.sync.aligned;
\twgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%r1}, {%r2}, %rd1, %p1, 1, 1, 0;
\twgmma.commit_group.sync.aligned;
\twgmma.wait_group.sync.aligned 1;
\t@%p2 bra \t$L__BB0_1;
\twgmma.wait_group.sync.aligned 0;
"""
_ROTATED = """
$L__BB0_9:
\twgmma.wait_group.sync.aligned 2;
$L__BB0_1:
\twgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%r1}, {%r2}, %rd1, %p1, 1, 1, 0;
\twgmma.commit_group.sync.aligned;
\t@%p3 bra \t$L__BB0_2;
\tbra.uni \t$L__BB0_9;
$L__BB0_2:
\twgmma.wait_group.sync.aligned 0;
"""
_SERIAL = _PIPELINED.replace("aligned 1;", "aligned 0;")


def test_wait_depth_of_plain_rotated_and_serialized_loops():
    assert gate.main_loop_wait(_PIPELINED) == 1
    assert gate.main_loop_wait(_ROTATED) == 2
    assert gate.main_loop_wait(_SERIAL) == 0


def test_ptxas_log_reading_local_memory_warnings_and_serialization():
    log = ("ptxas info    : (C7510) Potential Performance Loss: wgmma.mma_async instructions "
           "are serialized due to the presence of Extern calls\n"
           "ptxas warning : Register target 256 is larger than 232; ignored\n"
           "ptxas info    : Used 232 registers\n"
           "    40 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads")
    got = gate.analyze(_PIPELINED, log)
    assert got["target"] == "sm_90a" and got["serialized"] == ["C7510"]
    assert got["stack"] == 40 and got["warnings"] == [
        "ptxas warning : Register target 256 is larger than 232; ignored"]
    row = unit(**{k: got[k] for k in ("stack", "serialized", "warnings")})
    assert {"spill", "serial", "warn"} <= set(gate.failed_checks(row))
    assert gate.analyze(_PIPELINED, "ptxas info    : Used 90 registers")["warnings"] == []


# ------------------------------------------------------------- configs and dispatch


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("is_aligned", [True, False])
def test_every_model_count_up_to_32_has_fitting_configs(dtype, is_aligned):
    """M = 1..32 launches with either kernel: each has a config within the H100's shared
    memory by the model (which the gate checks against compiled sizes)."""
    for num_models in range(1, 33):
        for ieee in ((True, False) if dtype == torch.float32 else (False,)):
            assert configs.fitting_configs("rowscaled", num_models, dtype, ieee,
                                           is_aligned=is_aligned)
            for block_m in (64, 128):
                assert configs.fitting_configs("combine", num_models, dtype, ieee, block_m,
                                               is_aligned), (num_models, block_m)


CALLS = {  # name: (rows, groups)
    "one big group": (16448, 1),
    "400 rows": (400, 1),
    "per-sample, 50 rows each": (12800, 256),
    "3 clusters": (12800, 3),
    "one row": (1, 1),
}


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_dispatch_never_picks_a_kernel_without_a_fitting_config(call, dtype):
    num_rows, num_groups = CALLS[call]
    for num_models in [*range(1, 33), 48, 64, 128, 256]:
        for is_aligned in (True, False):
            strategy = im.choose_strategy(num_rows, num_groups, num_models, dtype,
                                          ieee=dtype == torch.float32, is_aligned=is_aligned)
            block_m = im.gpu_combine_block_m(num_rows, num_groups, dtype)
            assert configs.fitting_configs(strategy, num_models, dtype,
                                           dtype == torch.float32,
                                           block_m if strategy == "combine" else None,
                                           is_aligned), (num_models, strategy)


def test_combine_runs_out_of_shared_memory_at_large_m_and_dispatch_moves_on():
    """The prune is real: combine's configs stop fitting as M grows (every model's weight
    tile is pipelined), and dispatch then picks row-scaled."""
    assert not im.fits("combine", 16448, 1, 256, torch.bfloat16)
    assert im.default_strategy(16448, 1, 256) == "combine"
    assert im.choose_strategy(16448, 1, 256, torch.bfloat16) == "rowscaled"
    kept = configs.fitting_configs("combine", 16, torch.bfloat16, False, 128)
    assert 0 < len(kept) < len(configs.COMBINE_16BIT)


def test_prune_keeps_only_fitting_configs_of_the_calls_family():
    every = configs.gpu_configs("combine")
    kept = configs.fitting_configs("combine", 8, torch.bfloat16, False, 128, configs=every)
    for config in kept:
        assert configs.shared_bytes("combine", config, 8, torch.bfloat16, False, 128) \
            <= configs.SHARED_MEMORY_LIMIT
    unaligned = configs.fitting_configs("combine", 8, torch.bfloat16, False, 128, False)
    assert {configs._key(c) for c in unaligned} <= {(None, *c)
                                                   for c in configs.COMBINE_UNALIGNED}
    at_one = configs.fitting_configs("rowscaled", 1, torch.bfloat16, False)
    assert not {configs._key(c) for c in at_one} & set(configs.ROWSCALED_NOT_AT_M1)


@pytest.mark.parametrize("cfg", SWAPAB_CONFIGS, ids=lambda c: c.name)
def test_swapab_configs_are_launchable(cfg):
    """What the Gluon kernel assumes of a config, checked without compiling."""
    assert cfg.x_stages >= 2, "the consumer frees an x stage one k-step late"
    assert cfg.w_stages >= 1 and fits(gluon_smem_bytes(cfg))
    assert cfg.slot_t % 8 == 0 and 8 <= cfg.slot_t <= 256, "wgmma N: multiple of 8, <= 256"
    assert cfg.block_n % (16 * cfg.num_warps) == 0, "16 weight rows per warp"
    assert cfg.num_warps in (4, 8) and cfg.block_k % 16 == 0
