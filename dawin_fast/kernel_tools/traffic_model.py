"""Reports of the traffic model (``dawin_fast.kernels.cost_model``, the formulas the
dispatch ranks with): the prediction tables of ``kernels/README.md`` and its tuning log,
the calibration against the H100 baselines (docs/design.md), per-resource breakdowns and
the weight-stationary sensitivity study. Predictions only. The model's names are re-exported here.

``table()`` renders the main prediction table::

    python -c "from dawin_fast.kernel_tools.traffic_model import table; print(table())"
"""

from __future__ import annotations

from ..kernels import cost_model
from ..kernels.cost_model import (  # noqa: F401  (re-exported: the model's names)
    ELEM,
    H100,
    H200,
    LAUNCH_S,
    PROGRAM_FILL_S,
    SMEM_BYTES_PER_CLK,
    WSTAT_COMBINE_INSTR,
    WSTAT_COMBINE_LATENCY_S,
    WSTAT_EPILOGUE_CLK,
    WSTAT_Y_SECTOR_WASTE,
    Case,
    Ceilings,
    Prediction,
    best,
    cublas,
    epilogue,
    pack_slots,
    rowscaled,
    swapab,
    using,
    wgmma_efficiency,
    wstat,
)

# --------------------------------------------------------------------- the cases

def vit_cases() -> list[Case]:
    """The P1-P4 target shapes (ViT fc1 unless named; docs/design.md)."""
    b32 = dict(n_dim=3072, k_dim=768)
    return [
        Case("P1 B/32 fc1, 1 group 12800 rows", (12800,), 2, **b32),
        Case("P1 B/32 fc2, 1 group 12800 rows", (12800,), 2, 768, 3072),
        Case("P1 B/16 fc1, 1 group 12608 rows", (12608,), 2, **b32),
        Case("P1 L/14 fc1, 1 group 16448 rows", (16448,), 2, 4096, 1024),
        Case("P2 B/32 fc1, 256 x 50 rows", (50,), 2, **b32, repeat=256),
        Case("P2 B/32 fc2, 256 x 50 rows", (50,), 2, 768, 3072, repeat=256),
        Case("P2 B/16 fc1, 256 x 197 rows", (197,), 2, **b32, repeat=256),
        Case("P3 B/32 fc1, 1 group 400 rows", (400,), 2, **b32),
        Case("P4 B/32 fc1, M=8, 12800 rows", (12800,), 8, **b32),
    ]


def calibration() -> list[tuple[str, float, float]]:
    """(case, model seconds, measured seconds): cuBLAS on the pre-merged weight, and the
    row-scaled kernel (whose L2 traffic tests the L2 assumption), the baselines measured on
    the H100 (docs/design.md), so modelled with ``H100``'s ceilings."""
    with using(H100):
        return _calibration()


def _calibration() -> list[tuple[str, float, float]]:
    b32 = dict(n_dim=3072, k_dim=768)
    return [
        ("row-scaled B/32 fc1 256x50",
         rowscaled(Case("", (50,), 2, **b32, repeat=256)).seconds, 0.257e-3),
        ("row-scaled B/16 fc1 256x197",
         rowscaled(Case("", (197,), 2, **b32, repeat=256)).seconds, 0.978e-3),
        ("B/32 fc1 12800 rows", cublas(Case("", (12800,), 1, **b32)).seconds, 0.098e-3),
        ("L/14 fc1 16448 rows", cublas(Case("", (16448,), 1, 4096, 1024)).seconds, 0.210e-3),
        ("B/16 fc1 50432 rows", cublas(Case("", (50432,), 1, **b32)).seconds, 0.382e-3),
        ("B/32 fc1 400 rows", cublas(Case("", (400,), 1, **b32)).seconds, 0.010e-3),
    ]


def breakdown() -> str:
    """Per case and design: tensor FLOPs, L2 -> SM bytes, shared-memory bytes, the bound
    and the predicted time (cuBLAS, and the best config of each new design)."""
    lines = [f"{'case':36s} {'design (config)':24s} {'TFLOP':>6s} {'L2 GB':>6s} "
             f"{'smem GB':>7s} {'bound':>6s} {'ms':>7s} {'x cuBLAS':>8s}"]
    for case in vit_cases():
        base = cublas(case)
        got = best(case)
        rows = [("cuBLAS premerged", base), (f"swap-AB ({got['swapab'][0]})", got["swapab"][1]),
                (f"epilogue ({got['epilogue'][0]})", got["epilogue"][1])]
        for label, pred in rows:
            lines.append(f"{case.name:36s} {label:24s} {pred.flops / 1e12:6.3f} "
                         f"{pred.l2_bytes / 1e9:6.2f} {pred.smem_bytes / 1e9:7.2f} "
                         f"{pred.bound:>6s} {pred.seconds * 1e3:7.3f} "
                         f"{pred.seconds / base.seconds:8.2f}")
    return "\n".join(lines)


def hazard_fix_cost() -> str:
    """Per case: the best swap-AB config with the combine overlapping the MMAs (depth 1, the
    hazardous pipeline) and without (depth 0, the kernel now), as x cuBLAS; and the best
    epilogue config (kernels/README.md, "swapab")."""
    from ..kernels.fused_configs import EPILOGUE_CONFIGS, SWAPAB_CONFIGS

    lines = [f"{'case':36s} {'depth 1 (hazard)':>26s} {'depth 0 (now)':>26s} "
             f"{'epilogue':>22s}"]
    for case in vit_cases():
        base = cublas(case).seconds
        cells = []
        for overlap in (True, False):
            name, pred = min(((c.name, swapab(case, c, overlap=overlap)) for c in SWAPAB_CONFIGS),
                             key=lambda p: p[1].seconds)
            cells.append(f"{pred.seconds / base:5.2f}x ({name}, {pred.bound})")
        name, pred = min(((c.name, epilogue(case, c)) for c in EPILOGUE_CONFIGS),
                         key=lambda p: p[1].seconds)
        cells.append(f"{pred.seconds / base:5.2f}x ({name})")
        lines.append(f"{case.name:36s} {cells[0]:>26s} {cells[1]:>26s} {cells[2]:>22s}")
    return "\n".join(lines)


def table() -> str:
    lines = ["Calibration (model with H100 ceilings vs measured on the H100, docs/design.md):"]
    for name, model, measured in calibration():
        lines.append(f"  {name:28s} model {model * 1e3:.3f} ms  measured {measured * 1e3:.3f} ms")
    lines.append("")
    device = cost_model.DEVICE
    lines.append(f"Predictions with {device.name} ceilings ({device.tensor_flops / 1e12:.0f} "
                 f"TFLOP/s, {device.hbm_bytes_per_s / 1e12:.2f} TB/s HBM, "
                 f"{device.l2_bytes_per_s / 1e12:.1f} TB/s L2 -> SM):")
    lines.append(f"{'case':36s} {'cuBLAS ms':>9s}  {'swap-AB (config, bound)':>34s}"
                 f"  {'epilogue (config, bound)':>34s}")
    for case in vit_cases():
        base = cublas(case).seconds
        got = best(case)
        cells = []
        for design in ("swapab", "epilogue"):
            name, pred = got[design]
            cells.append(f"{pred.seconds / base:5.2f}x ({name}, {pred.bound})")
        lines.append(f"{case.name:36s} {base * 1e3:9.3f}  {cells[0]:>34s}  {cells[1]:>34s}")
    return "\n".join(lines)


# ---------------------------------------- large groups: P1 / P4 with the weight-stationary kernel

VIT_ROWS = {"B/32": 12800, "B/16": 12608, "L/14": 16448}  # 256 x 50, 64 x 197, 64 x 257
VIT_WIDTH = {"B/32": 768, "B/16": 768, "L/14": 1024}


def large_group_cases() -> list[Case]:
    """P1 (M = 2) and P4 (M = 8): one group of >= 8k rows, fc1, fc2 and QKV of each ViT."""
    out = []
    for vit, rows in VIT_ROWS.items():
        d = VIT_WIDTH[vit]
        for layer, n_dim, k_dim in (("fc1", 4 * d, d), ("fc2", d, 4 * d), ("QKV", 3 * d, d)):
            for p, num_models in (("P1", 2), ("P4", 8)):
                out.append(Case(f"{p} {vit} {layer} M={num_models} {rows}", (rows,),
                                num_models, n_dim, k_dim))
    return out


def large_group_table(hw: Ceilings | None = None) -> str:
    """Predicted ratio to cuBLAS on the pre-merged weight for P1 and P4, every design,
    with the time breakdown of the weight-stationary kernel::

        python -c "import dawin_fast.kernel_tools.traffic_model as t; print(t.large_group_table())"
    """
    hw = hw or cost_model.DEVICE
    from ..kernels.fused_configs import EPILOGUE_CONFIGS, SWAPAB_CONFIGS, WSTAT_CONFIGS, wstat_fits

    head = (f"{'case':24s} {'cuBLAS us':>9s} {'swapab':>7s} {'epilog':>7s} {'wstat':>16s}"
            f" | wstat: {'combine':>7s} {'tensor':>6s} {'L2':>6s} {'smem':>6s} {'bound':>6s}"
            f" {'progs':>5s}  (us per program)")
    lines = [f"{hw.name} ceilings: {hw.tensor_flops / 1e12:.0f} TFLOP/s, HBM "
             f"{hw.hbm_bytes_per_s / 1e12:.1f} TB/s, L2->SM {hw.l2_bytes_per_s / 1e12:.1f} "
             f"TB/s (assumed), {hw.sms} SMs", head]
    for case in large_group_cases():
        base = cublas(case, hw=hw).seconds
        sw = min(swapab(case, c, hw).seconds for c in SWAPAB_CONFIGS)
        ep = min(epilogue(case, c, hw=hw).seconds for c in EPILOGUE_CONFIGS)
        fitting = [c for c in WSTAT_CONFIGS if wstat_fits(c, case.k_dim)]
        cell, detail = f"{'no fit':>16s}", ""
        if fitting:
            cfg = min(fitting, key=lambda c: wstat(case, c, hw).seconds)
            pred = wstat(case, cfg, hw)
            per = dict(pred.parts)
            cell = f"{pred.seconds / base:5.2f}x ({cfg.name:5s})"
            detail = (f"{pred.serial_s * 1e6:7.1f} {per['tensor'] * 1e6:6.1f} "
                      f"{per['l2'] * 1e6:6.1f} {per['smem'] * 1e6:6.1f} {pred.bound:>6s} "
                      f"{pred.programs:5d}")
        lines.append(f"{case.name:24s} {base * 1e6:9.1f} {sw / base:6.2f}x {ep / base:6.2f}x "
                     f"{cell:>16s} | {detail}")
    return "\n".join(lines)


def pred_run(case: Case, cfg, hw: Ceilings | None = None) -> int:
    from ..kernels.fused_configs import wstat_run_rows

    hw = hw or cost_model.DEVICE
    return wstat_run_rows(case.rows, case.groups, case.n_dim, cfg, hw.sms)


def design_breakdown(hw: Ceilings | None = None) -> str:
    """Where the time goes, per P case and design (model, not measured): per program, the
    seconds of each SM resource (tensor cores, L2 -> SM, shared memory, CUDA-core issue:
    the register combine; "issue+mma" where issue and MMAs cannot overlap), the serial
    weight-stationary combine phase, the fill/latency of a program, and per call the HBM
    floor; waves of programs; the binding resource."""
    hw = hw or cost_model.DEVICE
    from ..kernels.fused_configs import EPILOGUE_CONFIGS, SWAPAB_CONFIGS, WSTAT_CONFIGS, wstat_fits

    # "issue+mma": the swap-AB consumer's issue and MMAs, which add up since the hazard fix
    cols = ("tensor", "l2", "smem", "issue", "issue+mma", "serial", "fill", "hbm")
    lines = [f"{hw.name}; us per program (hbm: per call); ratio to cuBLAS on the pre-merged "
             "weight",
             f"{'case':32s} {'design':18s} " + " ".join(f"{c:>6s}" for c in cols)
             + f" {'waves':>5s} {'bound':>6s} {'us':>7s} {'ratio':>6s}"]
    cases = [c for c in vit_cases() if not c.name.startswith("P1")] + large_group_cases()
    for case in cases:
        base = cublas(case, hw=hw)
        rows = [("cuBLAS premerged", base)]
        for name, fn, configs in (("swapab", swapab, SWAPAB_CONFIGS),
                                  ("epilogue", lambda c, g, h: epilogue(c, g, hw=h),
                                   EPILOGUE_CONFIGS),
                                  ("wstat", wstat, [g for g in WSTAT_CONFIGS
                                                    if wstat_fits(g, case.k_dim)])):
            if configs:
                cfg = min(configs, key=lambda g: fn(case, g, hw).seconds)
                rows.append((f"{name} {cfg.name}", fn(case, cfg, hw)))
        for label, pred in rows:
            parts = dict(pred.parts)
            lines.append(f"{case.name:32s} {label:18s} "
                         + " ".join(f"{parts.get(c, 0.0) * 1e6:6.1f}" for c in cols)
                         + f" {pred.waves:5d} {pred.bound:>6s} {pred.seconds * 1e6:7.1f} "
                         f"{pred.seconds / base.seconds:6.2f}")
    return "\n".join(lines)


def wstat_sensitivity(hw: Ceilings | None = None) -> str:
    """The weight-stationary predictions for the K = 768 cases under each assumption made
    pessimistic on its own (and all together): how far the P1/P4 margins stretch."""
    hw = hw or cost_model.DEVICE
    import dataclasses

    from ..kernels.fused_configs import wstat_config

    module = cost_model  # the constants the predictions read
    knobs = {
        "as modelled": {},
        "L2 -> SM 20% slower (wstat only)": {"l2": 0.8},
        "combine 2x the instructions": {"WSTAT_COMBINE_INSTR": 2 * cost_model.WSTAT_COMBINE_INSTR},
        "epilogue exposes 1500 clk": {"WSTAT_EPILOGUE_CLK": 1500},
        "y stores waste 4x": {"WSTAT_Y_SECTOR_WASTE": 4.0},
        "tensor 10% slower (wstat only)": {"tensor": 0.9},
    }
    knobs["all of these"] = {k: v for d in knobs.values() for k, v in d.items()}
    cfg = wstat_config("ws128")
    cases = [c for c in large_group_cases() if c.k_dim == 768 and c.name.split()[1] == "B/32"]
    lines = [f"{'assumption':34s} " + " ".join(f"{c.name[:15]:>15s}" for c in cases)]
    for label, changes in knobs.items():
        saved = {k: getattr(module, k) for k in changes if k.isupper()}
        try:
            for k, v in changes.items():
                if k.isupper():
                    setattr(module, k, v)
            slow = dataclasses.replace(
                hw, l2_bytes_per_s=hw.l2_bytes_per_s * changes.get("l2", 1.0),
                tensor_flops=hw.tensor_flops * changes.get("tensor", 1.0))
            cells = [wstat(c, cfg, slow).seconds / cublas(c, hw=hw).seconds for c in cases]
        finally:
            for k, v in saved.items():
                setattr(module, k, v)
        lines.append(f"{label:34s} " + " ".join(f"{r:14.2f}x" for r in cells))
    return "\n".join(lines)
