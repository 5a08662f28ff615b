"""The tile-exception tables: configs left out on one target, each row with its reason, and
every row naming a config that exists, on a target that is not Hopper."""

from __future__ import annotations

import pytest

from dawin_fast.kernels import arch, configs, fused_configs

OFF_HOPPER = {a.capability for a in arch.ARCHES.values() if a != arch.HOPPER}


def _rows():
    for capability, rows in configs.TILE_EXCEPTIONS.items():
        for row in rows:
            yield f"{row.kind} {row.family} {row.config} on {capability}", capability, row.reason
    for capability, rows in fused_configs.TWIN_TILE_EXCEPTIONS.items():
        for name, reason in rows:
            yield f"twin {name} on {capability}", capability, reason
    for config, reason in configs.ROWSCALED_M1_EXCEPTIONS:
        yield f"rowscaled {config} at M = 1", None, reason


@pytest.mark.parametrize("label,capability,reason", list(_rows()), ids=lambda v: str(v))
def test_every_row_says_why(label, capability, reason):
    assert isinstance(reason, str) and reason.strip(), f"{label}: no reason"
    assert capability is None or capability in OFF_HOPPER, f"{label}: not an off-Hopper target"


def test_rows_name_configs_that_exist_once():
    lists = {("combine", "16bit"): {(None, *c) for c in configs.COMBINE_16BIT
                                    + configs.COMBINE_UNALIGNED},
             ("combine", "fp32"): {(None, *c) for c in configs.COMBINE_FP32},
             ("rowscaled", "16bit"): set(configs.ROWSCALED_16BIT + configs.ROWSCALED_UNALIGNED),
             ("rowscaled", "fp32"): set(configs.ROWSCALED_FP32)}
    for capability, rows in configs.TILE_EXCEPTIONS.items():
        keys = [(r.kind, r.family, r.config) for r in rows]
        assert len(keys) == len(set(keys)), capability
        for kind, family, config in keys:
            assert config in lists[kind, family], (capability, kind, family, config)
    assert set(configs.ROWSCALED_NOT_AT_M1) <= set(configs.ROWSCALED_16BIT)
    names = {c.name for c in fused_configs.SWAPAB_CONFIGS}
    for rows in fused_configs.TWIN_TILE_EXCEPTIONS.values():
        assert {name for name, _ in rows} <= names


def test_the_public_views_are_the_tables():
    """What the pruner and the dispatch read (``SPILLS_OFF_HOPPER``,
    ``TWIN_SPILLS_OFF_HOPPER``) is derived from the rows, nothing more, nothing less."""
    expected = {}
    for capability, rows in configs.TILE_EXCEPTIONS.items():
        for r in rows:
            expected.setdefault((r.kind, r.family, capability), set()).add(r.config)
    assert configs.SPILLS_OFF_HOPPER == expected
    twin = {name for rows in fused_configs.TWIN_TILE_EXCEPTIONS.values() for name, _ in rows}
    assert isinstance(fused_configs.TWIN_SPILLS_OFF_HOPPER, tuple)
    assert set(fused_configs.TWIN_SPILLS_OFF_HOPPER) == twin == {"pack2x64"}
