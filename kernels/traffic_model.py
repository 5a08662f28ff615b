"""Traffic model of the fused kernels on a Hopper GPU (16-bit inputs): predictions only.

Ceilings (``Ceilings``): ``H200``, the GPU now lent (issue 19: device copy 4.3 TB/s and
bf16 8192^3 GEMM ~790 TFLOP/s measured there, DESIGN §3; 132 SMs; 60 MB L2), is the
default; ``H100`` holds the figures of the earlier loan (2.97 TB/s, 690 TFLOP/s, 50 MB L2),
on which the calibration points (DESIGN §4) were measured, so ``calibration()`` runs
under ``H100``. Every prediction takes ``hw=``; without it, ``DEVICE``, which
``using(ceilings)`` switches. The per-kernel formulas do not depend on the device.

Every program (CTA) of a kernel is costed by the resource it exhausts first on its SM:

* tensor cores: its FLOPs at the GEMM rate / 132 SMs, derated for narrow wgmma N
  (assumption, below);
* L2 -> SM: the bytes its tiles load, at ``l2_bytes_per_s`` / 132 (assumption);
* shared memory: bytes written by TMA plus bytes read by ldmatrix and wgmma, at 128 B per
  clock per SM;
* instruction issue (CUDA cores): the consumer warps' instructions per k-step, one warp
  per scheduler, one instruction per clock (register-combine kernels only; since the
  register-A hazard fix the swap-AB consumer's issue and its MMAs add up: "issue+mma");

plus a fixed start/drain time per program when one program fills an SM (non-persistent,
nothing overlaps its TMA prologue and epilogue). Programs run in waves of 132; the call
also cannot beat one pass over HBM (weights, x, y) at the measured copy rate, and pays a
launch overhead. The L2 -> SM rate is an assumption calibrated on the H100; the H200 has
the same die and clocks, so it is kept (its 60 MB L2 holds the same tiles: every weight
of these layers fits either L2). Nothing here has been checked on a GPU except the cuBLAS
calibration points (``calibration()``), which are DESIGN §4 measurements.

``table()`` renders the prediction table of ``kernels/NOTES.md``::

    python -c "from dawin_fast.kernels.traffic_model import table; print(table())"
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Ceilings:
    """The device figures the model divides by."""

    name: str
    tensor_flops: float  # bf16 8192^3 cuBLAS GEMM on random data
    hbm_bytes_per_s: float  # device-to-device copy, bytes read + written
    l2_bytes_per_s: float  # L2 -> SM, all SMs (assumption)
    sms: int
    l2_bytes: int
    clock_hz: float = 1.755e9  # assumption: sustained SM clock under tensor-core load


# H100 SXM, the earlier loan (DESIGN §3, measured there). L2 -> SM: cuBLAS needs >= 7.2
# TB/s to run B/32 fc1 in the measured 98 us; 7.5 matches the row-scaled probes.
H100 = Ceilings("H100 SXM", 690e12, 2.97e12, 7.5e12, 132, 50 * 10**6)
# H200 (DESIGN §3, KINDS.md: 4.3 TB/s copy, 769-798 TFLOP/s measured on such machines in
# this workplace; 790 taken). Same die as the H100: L2 -> SM kept at 7.5 TB/s (assumption,
# not measured on the H200; the first-contact run's cuBLAS times check it).
H200 = Ceilings("H200", 790e12, 4.3e12, 7.5e12, 132, 60 * 10**6)
#: The ceilings a prediction uses when it is given none (``using`` switches it).
DEVICE = H200

SMEM_BYTES_PER_CLK = 128  # per SM
LAUNCH_S = 2.0e-6  # assumption: launch and tail of one kernel
PROGRAM_FILL_S = 1.0e-6  # assumption: TMA prologue + epilogue of a program owning its SM
ELEM = 2  # bytes per element (fp16/bf16)


@contextlib.contextmanager
def using(ceilings: Ceilings) -> Iterator[None]:
    """Predict with another device's ceilings inside the block, for calls given no ``hw``
    (module state: the model is a few pure functions of these constants)."""
    global DEVICE
    saved, DEVICE = DEVICE, ceilings
    try:
        yield
    finally:
        DEVICE = saved


def wgmma_efficiency(n: int) -> float:
    """Fraction of peak a register-A wgmma with instruction N = n reaches (assumption:
    the A fragment is re-read from registers for every n-wide instruction)."""
    return {8: 0.5, 16: 0.75, 32: 0.9}.get(n, 1.0)


@dataclass(frozen=True)
class Case:
    """One call: group lengths (rows), M models, N outputs, K inputs. ``repeat``: the
    lengths repeated that many times (256 images of 50 tokens: ``(50,)``, repeat 256)."""

    name: str
    lengths: tuple[int, ...]
    num_models: int
    n_dim: int
    k_dim: int
    repeat: int = 1

    @property
    def rows(self) -> int:
        return sum(self.lengths) * self.repeat

    @property
    def groups(self) -> int:
        return len(self.lengths) * self.repeat


@dataclass(frozen=True)
class Prediction:
    seconds: float
    bound: str  # what limits the programs: tensor, l2, smem, issue, hbm
    programs: int
    flops: float = 0.0  # tensor-core FLOPs of the call (padding included)
    l2_bytes: float = 0.0  # L2 -> SM bytes of the call
    smem_bytes: float = 0.0  # shared-memory bytes written and read
    serial_s: float = 0.0  # per-program phase that overlaps nothing (wstat's combine)
    #: seconds per program of each SM resource (tensor, l2, smem, issue), the serial phase
    #: and fill, then the call's HBM floor and launch: the breakdown of ``NOTES``
    parts: tuple = ()
    waves: int = 0


def _finish(programs: int, per_program: dict[str, float], fill: float, hbm_bytes: float,
            hw: Ceilings | None = None, serial: float = 0.0):
    """Waves of programs, each taking its binding resource's time (plus ``serial``: a phase
    that overlaps nothing, e.g. the weight-stationary combine) and ``fill``."""
    hw = hw or DEVICE
    totals = {k: v * programs for k, v in per_program.items() if k.startswith("_")}
    per_program = {k: v for k, v in per_program.items() if not k.startswith("_")}
    bound = max(per_program, key=per_program.get)
    waves = math.ceil(programs / hw.sms)
    body = waves * (per_program[bound] + serial + fill)
    hbm = hbm_bytes / hw.hbm_bytes_per_s
    parts = (*per_program.items(), ("serial", serial), ("fill", fill), ("hbm", hbm),
             ("launch", LAUNCH_S))
    if hbm > body:
        bound, body = "hbm", hbm
    return Prediction(body + LAUNCH_S, bound, programs, totals["_flops"], totals["_l2"],
                      totals["_smem"], serial, parts, waves)


def _per_sm(flops: float, l2: float, smem: float, issue_clk: float = 0.0, n_eff=1.0,
            hw: Ceilings | None = None):
    """Seconds one program needs of each SM resource (and, under "_", its raw amounts)."""
    hw = hw or DEVICE
    return {
        "tensor": flops / (hw.tensor_flops / hw.sms) / n_eff,
        "l2": l2 / (hw.l2_bytes_per_s / hw.sms),
        "smem": smem / (SMEM_BYTES_PER_CLK * hw.clock_hz),
        "issue": issue_clk / hw.clock_hz,
        "_flops": flops,
        "_l2": l2,
        "_smem": smem,
    }


def _hbm_bytes(case: Case) -> float:
    return (case.num_models * case.n_dim * case.k_dim + case.rows * (case.k_dim + case.n_dim)) \
        * ELEM


def cublas(case: Case, block_m: int = 128, block_n: int = 256,
           hw: Ceilings | None = None) -> Prediction:
    """cuBLAS on one pre-merged weight (M = 1), persistent: no per-program fill."""
    tiles = math.ceil(case.rows / block_m) * math.ceil(case.n_dim / block_n)
    k = case.k_dim
    per = _per_sm(
        flops=2 * block_m * block_n * k,
        l2=(block_m + block_n) * k * ELEM,
        smem=((block_m + block_n) + block_m + 2 * block_n) * k * ELEM,  # TMA in, 2 WGs read
        hw=hw,
    )
    merged = Case(case.name, case.lengths, 1, case.n_dim, case.k_dim, case.repeat)
    return _finish(tiles, per, 0.0, _hbm_bytes(merged), hw)


def pack_slots(case: Case, slot_t: int, slots: int) -> tuple[int, float]:
    """(row tiles, mean distinct groups per tile) as ``schedule.slot_schedule`` packs them.

    Equal groups (one length, repeated) without listing them: a group takes
    p = ceil(len / slot_t) slots, tile j holds slots [j * slots, (j + 1) * slots), and the
    pattern repeats every p / gcd(p, slots) tiles.
    """
    if case.groups == 1:
        return math.ceil(case.rows / (slot_t * slots)), 1.0
    if len(case.lengths) == 1:
        per_group = max(math.ceil(case.lengths[0] / slot_t), 1) if case.lengths[0] else 0
        if per_group == 0:
            return 0, 1.0
        tiles = math.ceil(per_group * case.repeat / slots)
        period = min(tiles, per_group // math.gcd(per_group, slots))
        distinct = [((j + 1) * slots - 1) // per_group - (j * slots) // per_group + 1
                    for j in range(period)]
        return tiles, sum(distinct) / period
    order = [g for g, n in enumerate(case.lengths * case.repeat)
             for _ in range(math.ceil(n / slot_t))]
    distinct = [len(set(order[i:i + slots])) for i in range(0, len(order), slots)]
    return len(distinct), sum(distinct) / max(len(distinct), 1)


def swapab(case: Case, cfg, hw: Ceilings | None = None, overlap: bool = False) -> Prediction:
    """Gluon swap-AB register combine with a ``fused_configs.SwapABConfig``.

    ``overlap=False`` is the kernel as it is: each k-step's wgmmas are retired before the
    next k-step's combine (wait depth 0, the register-A hazard fix), so the consumer's
    instruction issue and its MMAs add up (bound "issue+mma"); the TMA loader's L2 and
    shared-memory traffic still overlaps them. ``overlap=True`` is the former depth-1
    pipeline, where the combine hid behind the MMAs (it had the hazard): for comparison."""
    bn, bk, slot_t, slots = cfg.block_n, cfg.block_k, cfg.slot_t, cfg.slots
    bt = slot_t * slots
    m, k = case.num_models, case.k_dim
    row_tiles, distinct = pack_slots(case, slot_t, slots)
    programs = row_tiles * math.ceil(case.n_dim / bn)
    k_steps = math.ceil(k / bk)
    e = bn * bk // (32 * cfg.num_warps)  # weight elements per consumer thread per tile
    # Per weight tile: unpack e, e FMAs per distinct group, ~30 for barrier wait, ldmatrix,
    # fence, bar.sync, arrive and coefficient loads. Per slot: pack e/2 and issue ~10.
    issue = k_steps * (m * (e * (1 + distinct) + 30) + slots * (e / 2 + 10))
    per = _per_sm(
        flops=2 * bn * bt * k_steps * bk,
        l2=(m * bn + bt) * k * ELEM,
        smem=(2 * m * bn + bt + (bn // 64) * bt) * k * ELEM,
        issue_clk=issue,
        n_eff=wgmma_efficiency(slot_t),
        hw=hw,
    )
    if not overlap:
        per["issue+mma"] = per.pop("issue") + per.pop("tensor")
    return _finish(programs, per, PROGRAM_FILL_S, _hbm_bytes(case), hw)


def epilogue(case: Case, cfg, occupancy: int | None = None,
             hw: Ceilings | None = None) -> Prediction:
    """Epilogue-scaled multi-GEMM with a ``fused_configs.EpilogueConfig``."""
    hw = hw or DEVICE
    bm, bn = cfg.block_m, cfg.block_n
    m, k = case.num_models, case.k_dim
    programs = math.ceil(case.rows / bm) * math.ceil(case.n_dim / bn)
    wgs = max(bm // 64, 1)
    per = _per_sm(
        flops=2 * bm * bn * k * m,
        l2=m * (bm + bn) * k * ELEM,
        smem=m * ((bm + bn) + bm + wgs * bn) * k * ELEM,
        hw=hw,
    )
    # Each model boundary drains the wgmma pipeline once (~200 clocks, assumption).
    per["tensor"] += m * 200 / hw.clock_hz
    smem_bytes = cfg.num_stages * (bm + bn) * cfg.block_k * ELEM
    occ = occupancy or max(1, min(232448 // smem_bytes, 2))
    fill = PROGRAM_FILL_S / occ
    return _finish(programs, per, fill, _hbm_bytes(case), hw)


#: Weight-stationary combine phase (assumptions): thread-instructions per weight element
#: per model (a 16-byte load per 8 elements, one unpack to fp32, one FFMA, address and
#: loop overhead), issued at 4 warp-instructions per clock per SM; plus the latency of
#: its first loads and of the fence/barrier before the first wgmma.
WSTAT_COMBINE_INSTR = 2.5
WSTAT_COMBINE_LATENCY_S = 1.5e-6
#: Per row block of the weight-stationary stream: draining the wgmma pipeline before the
#: epilogue and issuing its stores (assumption: ~500 clocks exposed).
WSTAT_EPILOGUE_CLK = 500
#: y stored straight from the wgmma accumulator layout (no shared-memory staging: the
#: resident tile leaves no room for it): 4 rows x 16 bytes per warp store, half of each
#: 32-byte sector's bytes wasted, so y costs twice its bytes of L2 traffic.
WSTAT_Y_SECTOR_WASTE = 2.0


def wstat(case: Case, cfg, hw: Ceilings | None = None) -> Prediction:
    """Weight-stationary Gluon kernel (``wstat_gluon``) with a ``fused_configs.WStatConfig``.

    Per program: a combine phase (serial: the M weight tiles [BLOCK_N, K] from L2, combined
    on the CUDA cores into the resident tile), then a stream phase over its run of rows:
    x tiles by TMA, wgmma with both operands in shared memory (the resident tile as A, x^T
    as B: m64 x n BLOCK_T x k16 per warp group), epilogue per row block. Only calls the
    kernel fits (``wstat_fits``) are meaningful.
    """
    from .fused_configs import wstat_run_rows

    hw = hw or DEVICE
    bn, bt, bk = cfg.block_n, cfg.block_t, cfg.block_k
    m, n, k = case.num_models, case.n_dim, case.k_dim
    kp = math.ceil(k / bk) * bk
    run = wstat_run_rows(case.rows, case.groups, n, cfg, hw.sms)
    n_tiles = math.ceil(n / bn)
    programs = sum(math.ceil(g / run) for g in case.lengths) * case.repeat * n_tiles
    rows = min(max(case.lengths), run)  # the longest program's rows
    blocks = math.ceil(rows / bt)
    wgs = max(bn // 64, 1)
    comb_l2 = m * bn * kp * ELEM
    comb_issue = m * bn * kp * WSTAT_COMBINE_INSTR / (4 * 32)
    combine = (max(comb_l2 / (hw.l2_bytes_per_s / hw.sms), comb_issue / hw.clock_hz)
               + WSTAT_COMBINE_LATENCY_S)
    per = _per_sm(
        flops=2 * bn * bt * blocks * kp,
        l2=blocks * bt * (kp + WSTAT_Y_SECTOR_WASTE * bn) * ELEM,
        smem=blocks * (bt + wgs * (64 + bt)) * kp * ELEM,
        hw=hw,
    )
    per["tensor"] += blocks * WSTAT_EPILOGUE_CLK / hw.clock_hz
    per["_l2"] += comb_l2
    per["_smem"] += bn * kp * ELEM
    return _finish(programs, per, PROGRAM_FILL_S, _hbm_bytes(case), hw, serial=combine)


# --------------------------------------------------------------------- the cases

def vit_cases() -> list[Case]:
    """DESIGN §5 P1-P4 shapes (ViT fc1 unless named)."""
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


def rowscaled(case: Case, block_m: int = 128, block_n: int = 128) -> Prediction:
    """Today's row-scaled kernel (M-times-longer K, every tile of x and W_i loaded per
    model), for calibration only: L2 and tensor costs, as if its combine were free."""
    m, k = case.num_models, case.k_dim
    programs = math.ceil(case.rows / block_m) * math.ceil(case.n_dim / block_n)
    per = _per_sm(flops=2 * block_m * block_n * k * m, l2=m * (block_m + block_n) * k * ELEM,
                  smem=m * 3 * (block_m + block_n) * k * ELEM)
    return _finish(programs, per, 0.0, _hbm_bytes(case))


def calibration() -> list[tuple[str, float, float]]:
    """(case, model seconds, measured seconds): cuBLAS on the pre-merged weight, and the
    row-scaled kernel (whose L2 traffic tests the L2 assumption), DESIGN §4: measured on
    the H100, so modelled with ``H100``'s ceilings."""
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


def best(case: Case):
    """(name, prediction) of the fastest config of each new design."""
    from .fused_configs import EPILOGUE_CONFIGS, SWAPAB_CONFIGS

    out = {}
    for design, fn, configs in (("swapab", swapab, SWAPAB_CONFIGS),
                                ("epilogue", epilogue, EPILOGUE_CONFIGS)):
        preds = [(cfg.name, fn(case, cfg)) for cfg in configs]
        out[design] = min(preds, key=lambda p: p[1].seconds)
    return out


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
    epilogue config (kernels/NOTES.md, "wgmma register-A hazard")."""
    from .fused_configs import EPILOGUE_CONFIGS, SWAPAB_CONFIGS

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
    lines = ["Calibration (model with H100 ceilings vs measured on the H100, DESIGN §4):"]
    for name, model, measured in calibration():
        lines.append(f"  {name:28s} model {model * 1e3:.3f} ms  measured {measured * 1e3:.3f} ms")
    lines.append("")
    lines.append(f"Predictions with {DEVICE.name} ceilings ({DEVICE.tensor_flops / 1e12:.0f} "
                 f"TFLOP/s, {DEVICE.hbm_bytes_per_s / 1e12:.2f} TB/s HBM, "
                 f"{DEVICE.l2_bytes_per_s / 1e12:.1f} TB/s L2 -> SM):")
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


# ------------------------------------------------------------- issue 24: P1 / P4 on paper

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
    with the time breakdown of the weight-stationary kernel (``NOTES``)::

        python -c "from dawin_fast.kernels.traffic_model import large_group_table as t; print(t())"
    """
    hw = hw or DEVICE
    from .fused_configs import EPILOGUE_CONFIGS, SWAPAB_CONFIGS, WSTAT_CONFIGS, wstat_fits

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
    from .fused_configs import wstat_run_rows

    hw = hw or DEVICE
    return wstat_run_rows(case.rows, case.groups, case.n_dim, cfg, hw.sms)


def design_breakdown(hw: Ceilings | None = None) -> str:
    """Where the time goes, per P case and design (model, not measured): per program, the
    seconds of each SM resource (tensor cores, L2 -> SM, shared memory, CUDA-core issue:
    the register combine; "issue+mma" where issue and MMAs cannot overlap), the serial
    weight-stationary combine phase, the fill/latency of a program, and per call the HBM
    floor; waves of programs; the binding resource."""
    hw = hw or DEVICE
    from .fused_configs import EPILOGUE_CONFIGS, SWAPAB_CONFIGS, WSTAT_CONFIGS, wstat_fits

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
    hw = hw or DEVICE
    import dataclasses
    import sys

    from .fused_configs import wstat_config

    module = sys.modules[__name__]
    knobs = {
        "as modelled": {},
        "L2 -> SM 20% slower (wstat only)": {"l2": 0.8},
        "combine 2x the instructions": {"WSTAT_COMBINE_INSTR": 2 * WSTAT_COMBINE_INSTR},
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
