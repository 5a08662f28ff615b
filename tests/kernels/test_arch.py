"""Every GPU our users have: configs filtered by each target's shared memory,
the device's limit queried once, and no Hopper-only kernel (Gluon, TMA) off sm_90.

No GPU here: CUDA devices are faked by their properties (``torch.cuda.
get_device_properties``) and by stand-ins with ``is_cuda``; nothing is launched on them.
"""

from __future__ import annotations

import importlib
import types

import pytest
import torch

from dawin_fast.kernels import arch, configs, dispatch
from dawin_fast.kernels.fused_configs import EPILOGUE_CONFIGS, epilogue_fits

im = importlib.import_module("dawin_fast.kernels.interp_matmul")

ARCHES = list(arch.ARCHES.values())
PROPS = {  # what torch reports for these cards
    "NVIDIA H100 80GB HBM3": (9, 0, 232448),
    "NVIDIA A100-SXM4-80GB": (8, 0, 166912),
    "NVIDIA L40S": (8, 9, 101376),
}


@pytest.fixture
def fake_gpu(monkeypatch):
    """Make device cuda:0 look like the named card; returns a setter."""
    queried = []

    def use(name: str):
        major, minor, smem = PROPS[name]
        arch.forget_devices()

        def props(index):
            queried.append(index)
            return types.SimpleNamespace(name=name, major=major, minor=minor,
                                         shared_memory_per_block_optin=smem)
        monkeypatch.setattr(torch.cuda, "get_device_properties", props)
        monkeypatch.setattr(dispatch, "interpreting", lambda: False)
        return queried

    yield use
    arch.forget_devices()


class FakeCuda:
    """Enough of a CUDA tensor for ``dispatch.target_for``."""

    def __init__(self, dtype=torch.bfloat16):
        self.is_cuda, self.dtype, self.device = True, dtype, torch.device("cuda", 0)


@pytest.mark.parametrize("name", PROPS)
def test_the_device_limit_is_queried_once_and_used(fake_gpu, name):
    queried = fake_gpu(name)
    device = torch.device("cuda", 0)
    for _ in range(3):
        assert arch.shared_memory_limit(device) == PROPS[name][2]
        target = dispatch.target_for(FakeCuda(), FakeCuda())
    assert queried == [0], "one query per device"
    assert target.smem_limit == PROPS[name][2] and target.hopper == (PROPS[name][0] == 9)


@pytest.mark.parametrize("name", PROPS)
def test_no_hopper_only_kernel_off_sm90(fake_gpu, monkeypatch, name):
    """Even with Gluon present and enabled, only sm_90 gets it; off Hopper "swapab" runs the
    plain-Triton twin and "epilogue" its pointer loads (no TMA descriptors)."""
    fake_gpu(name)
    monkeypatch.setattr(dispatch, "GLUON_AVAILABLE", True)
    monkeypatch.setattr(dispatch, "GLUON_ENABLED", True)
    monkeypatch.setattr(dispatch, "tma_compatible", lambda x, w: None)
    hopper = PROPS[name][0] == 9
    target = dispatch.target_for(FakeCuda(), FakeCuda())
    assert target.gluon == hopper
    launched = []
    monkeypatch.setattr(dispatch, "target_for", lambda x, w: target)
    monkeypatch.setattr(dispatch, "swapab_gluon_matmul",
                        lambda *a, **k: launched.append(("gluon", None)))
    monkeypatch.setattr(dispatch, "swapab_twin_matmul",
                        lambda *a, **k: launched.append(("twin", None)))
    monkeypatch.setattr(dispatch, "epilogue_scaled_matmul",
                        lambda *a, use_tma=None, **k: launched.append(("epilogue", use_tma)))
    monkeypatch.setattr(dispatch, "wstat_reason", lambda *a: None)
    monkeypatch.setattr(dispatch, "wstat_gluon_matmul",
                        lambda *a, **k: launched.append(("wstat gluon", None)))
    monkeypatch.setattr(dispatch, "wstat_twin_matmul",
                        lambda *a, **k: launched.append(("wstat twin", None)))
    x = torch.zeros(64, 32, dtype=torch.bfloat16)
    weight = torch.zeros(2, 48, 32, dtype=torch.bfloat16)
    coeffs, offsets = torch.zeros(1, 2), torch.tensor([0, 64])
    y = torch.empty(64, 48, dtype=torch.bfloat16)
    for strategy in ("swapab", "epilogue", "wstat"):
        dispatch.launch(strategy, x, weight, coeffs, offsets, None, y)
    assert launched == ([("gluon", None), ("epilogue", None), ("wstat gluon", None)] if hopper
                        else [("twin", None), ("epilogue", False), ("wstat twin", None)])
    # The measured dispatch's candidates: configs that fit there, no epilogue kernel off
    # Hopper (it spills with pointer loads and mma.sync: kernels/README.md, "epilogue"), and
    # no wstat where its Gluon kernel cannot run (the model is of that kernel, not of its twin).
    for num_rows, groups in ((12800, 1), (12800, 256), (400, 1)):
        found = dispatch.candidates(num_rows, groups, 2, 3072, 768, torch.bfloat16, target,
                                    factor=100.0)
        assert {c.strategy for c in found} == ({"swapab", "epilogue", "wstat"} if hopper
                                               else {"swapab"})
        assert all(epilogue_fits(c.config, torch.bfloat16, target.smem_limit)
                   for c in found if c.strategy == "epilogue")


@pytest.mark.parametrize("target", ARCHES, ids=lambda a: a.name)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_configs_fit_each_targets_limit(target, dtype):
    """Every M up to 32 has row-scaled configs within each target's limit, and 16-bit
    combine configs too (fp32 combine runs out at M = 32 below Hopper's limit: the
    dispatch then picks row-scaled, next test); every kept config fits by the model
    (which the gate bounds by the compiled size)."""
    for num_models in (1, 2, 8, 16, 32):
        for ieee in ((True, False) if dtype == torch.float32 else (False,)):
            for kind, block_ms in (("rowscaled", (None,)), ("combine", (64, 128))):
                for block_m in block_ms:
                    kept = configs.fitting_configs(kind, num_models, dtype, ieee, block_m,
                                                   limit=target.smem_limit,
                                                   capability=target.capability)
                    assert kept or (kind == "combine" and dtype == torch.float32
                                    and not target.wgmma), (kind, num_models, block_m)
                    for c in kept:
                        assert configs.shared_bytes(kind, c, num_models, dtype, ieee,
                                                    block_m) <= target.smem_limit


def test_smaller_limits_keep_fewer_configs():
    """The filter is real: combine at M = 8 (128-row blocks) keeps fewer configs on an
    A100 than on an H100, and fewer still on Ada; some H100 config exceeds Ada's limit."""
    kept = [len(configs.fitting_configs("combine", 8, torch.bfloat16, False, 128,
                                        limit=a.smem_limit))
            for a in (arch.HOPPER, arch.AMPERE, arch.ADA)]
    assert kept[0] > kept[1] > kept[2] > 0, kept
    assert not epilogue_fits("e128x128", torch.bfloat16, arch.ADA.smem_limit)
    assert all(epilogue_fits(c.name, torch.bfloat16, arch.AMPERE.smem_limit)
               for c in EPILOGUE_CONFIGS)


@pytest.mark.parametrize("target", ARCHES, ids=lambda a: a.name)
def test_no_call_fails_for_lack_of_a_config(target):
    """Where combine cannot fit (large M, or Ada's small shared memory), the dispatch
    falls back to row-scaled, whose shared memory does not grow with M."""
    cuda = dispatch.Target(cuda=True, half=True, gluon=False, hopper=target.wgmma,
                           smem_limit=target.smem_limit)
    for dtype in (torch.bfloat16, torch.float32):
        for num_models in (*range(1, 33), 64, 256):
            for rows, groups in ((16448, 1), (12800, 256), (1, 1)):
                strategy = im.choose_strategy(rows, groups, num_models, dtype,
                                              dtype == torch.float32, True, 3072, 768, cuda)
                assert im.fits(strategy, rows, groups, num_models, dtype,
                               dtype == torch.float32, True, target.smem_limit)
    assert not im.fits("combine", 16448, 1, 64, torch.bfloat16, limit=arch.ADA.smem_limit)
    assert im.fits("combine", 16448, 1, 64, torch.bfloat16, limit=arch.HOPPER.smem_limit)


@pytest.mark.parametrize("target", [arch.AMPERE, arch.ADA], ids=lambda a: a.name)
def test_configs_that_spill_there_are_dropped_off_hopper(target):
    """The configs the gate saw spill with mma.sync are never autotuned on that target
    (and stay on Hopper), while each family keeps at least one config."""
    for (kind, family, capability), spilled in configs.SPILLS_OFF_HOPPER.items():
        if capability != target.capability:
            continue
        dtype = torch.float32 if family == "fp32" else torch.bfloat16
        for ieee in ((True, False) if family == "fp32" else (False,)):
            kept = configs.fitting_configs(kind, 2, dtype, ieee, 64, limit=target.smem_limit,
                                           capability=target.capability)
            keys = {configs._key(c) for c in kept}
            assert keys and not keys & spilled, (kind, family)
            on_hopper = {configs._key(c) for c in configs.fitting_configs(
                kind, 2, dtype, ieee, 64, limit=arch.HOPPER.smem_limit)}
            assert on_hopper & spilled, "the exclusion is per target"
