"""Compile gate for the issue-11 kernels: what sm_90a really gets, on Triton 3.8 and 3.6.

Every variant of ``fused_compile.VARIANTS`` (every swap-AB and epilogue-scaled config,
fp16 and bf16, M from 1 to 32, one group and many) is compiled through the real launcher
with a real launch's specialization, once with the installed Triton and once with the GPU
machine's Triton 3.6.0 when it is unpacked (``$DAWIN_TRITON36``, default /work/tri36).
Each must: compile for sm_90a, use wgmma (the Gluon swap-AB kernel with its A operand in
registers), keep at least one wgmma group in flight in its main loop, not spill, draw no
ptxas warning (serialization included) and fit in 232 448 B of shared memory; or be listed
in ``fused_compile.ALLOWED`` with its reason.

Without a GPU this cannot show speed or tensor-core numerics: only what is built.
"""

from __future__ import annotations

import os

import pytest

from dawin_fast.kernels.fused_configs import (
    GLUON_SMEM_SLACK,
    SWAPAB_CONFIGS,
    fits,
    gluon_smem_bytes,
)
from tests.kernels import fused_compile as fc

TRITON36 = os.environ.get("DAWIN_TRITON36", "/work/tri36")
VERSIONS = ["installed", "3.6"]


@pytest.fixture(scope="module")
def compiled():
    """Rows of both Tritons, compiled concurrently in two subprocesses."""
    procs = {"installed": fc.start_subprocess()}
    if os.path.isdir(os.path.join(TRITON36, "triton")):
        procs["3.6"] = fc.start_subprocess(TRITON36)
    return {version: {row["name"]: row for row in fc.collect(proc)}
            for version, proc in procs.items()}


def _rows(compiled, version):
    if version not in compiled:
        pytest.skip(f"Triton 3.6 not unpacked at {TRITON36} (set DAWIN_TRITON36)")
    return compiled[version]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", [v["name"] for v in fc.VARIANTS])
def test_variant_passes_the_gate(compiled, version, name):
    row = _rows(compiled, version)[name]
    if version == "3.6":
        assert row["triton"].startswith("3.6"), f"expected Triton 3.6, ran {row['triton']}"
    found = fc.problems(row)
    if name in fc.ALLOWED:
        assert row["ok"], f"allowed variant must still compile: {row.get('error')}"
        return
    assert not found, f"{name} on Triton {row.get('triton')}: {found}"


@pytest.mark.parametrize("version", VERSIONS)
def test_gluon_smem_model_matches_compiled(compiled, version):
    """The shared-memory model the configs are checked with is at most GLUON_SMEM_SLACK
    below the compiled size (alignment, the epilogue's layout-conversion scratch)."""
    rows = _rows(compiled, version)
    configs = {c.name: c for c in SWAPAB_CONFIGS}
    for row in rows.values():
        if row["launcher"] != "swapab_gluon" or not row.get("ok"):
            continue
        model = gluon_smem_bytes(configs[row["config"]])
        assert 0 <= row["smem"] - model <= GLUON_SMEM_SLACK, (row["name"], row["smem"], model)


@pytest.mark.parametrize("cfg", SWAPAB_CONFIGS, ids=lambda c: c.name)
def test_swapab_configs_are_launchable(cfg):
    """What the Gluon kernel assumes of a config, checked without compiling."""
    assert cfg.x_stages >= 2, "the consumer frees an x stage one k-step late"
    assert cfg.w_stages >= 1 and fits(gluon_smem_bytes(cfg))
    assert cfg.slot_t % 8 == 0 and 8 <= cfg.slot_t <= 256, "wgmma N: multiple of 8, <= 256"
    assert cfg.block_n % (16 * cfg.num_warps) == 0, "16 weight rows per warp"
    assert cfg.num_warps in (4, 8) and cfg.block_k % 16 == 0


# --------------------------------------------------- the checker itself can fail

_PIPELINED = """
$L__BB0_1:
\twgmma.fence.sync.aligned;
\twgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%r1}, {%r2}, %rd1, %p1, 1, 1, 0;
\twgmma.commit_group.sync.aligned;
\twgmma.wait_group.sync.aligned 1;
\t@%p2 bra \t$L__BB0_1;
\twgmma.wait_group.sync.aligned 0;
"""
# The same loop, rotated (latch block first, as LLVM lays out some loops), and serialized.
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
_SASS_RS = "HGMMA.64x128x16.F32.BF16 R24, R152, gdesc[UR8], R24 ;"
_SASS_SS = "HGMMA.64x128x16.F32.BF16 R24, gdesc[UR4], R24 ;"


def test_analyse_reads_wait_depth_in_loops():
    assert fc.analyse(_PIPELINED, _SASS_RS, "")["loop_wait_depth"] == 1
    assert fc.analyse(_ROTATED, _SASS_RS, "")["loop_wait_depth"] == 2
    assert fc.analyse(_SERIAL, _SASS_RS, "")["loop_wait_depth"] == 0


def test_analyse_reads_operands_spills_and_serialization():
    log = ("ptxas info    : (C7515) Potential Performance Loss: wgmma.mma_async instructions "
           "are serialized due to ...\n    0 bytes stack frame, 24 bytes spill stores, "
           "24 bytes spill loads\nptxas info    : Used 232 registers")
    got = fc.analyse(_PIPELINED, _SASS_SS + "\nSTL [R1], R2 ;", log)
    assert not got["register_a"] and got["serialized"] and got["spill_bytes"] == 48
    assert got["regs"] == 232 and got["local_memory"]
    assert fc.analyse(_PIPELINED, _SASS_RS, "")["register_a"]


def test_problems_rejects_each_defect():
    good = dict(ok=True, sm90a=True, mma="wgmma", launcher="swapab_gluon", register_a=True,
                loop_wait_depth=1, spill_bytes=0, local_memory=False, serialized=False,
                ptxas_warnings=[], smem=100_000, tma_loads=3, problem={})
    assert fc.problems(good) == []
    for change in (dict(mma="mma.sync"), dict(register_a=False), dict(loop_wait_depth=0),
                   dict(spill_bytes=8), dict(serialized=True, ptxas_warnings=["C7515"]),
                   dict(smem=fc.SMEM_LIMIT + 1), dict(tma_loads=0), dict(sm90a=False),
                   dict(ok=False, error="x")):
        assert fc.problems({**good, **change}), change
