"""The traffic model of the fused kernels on a Hopper GPU (16-bit inputs): what the
dispatch ranks configs with (``dispatch._costed``). Predictions only.

Ceilings (``Ceilings``): ``H200`` (device copy 4.3 TB/s and bf16 8192^3 GEMM ~790 TFLOP/s
measured on such machines; 132 SMs; 60 MB L2) is the default, the Hopper the first GPU
session is expected on; ``H100`` holds the figures measured on an H100 SXM (2.97 TB/s,
690 TFLOP/s, 50 MB L2), where the calibration points were measured (docs/design.md,
"Baselines measured on the H100"). Every prediction takes ``hw=``;
without it, ``DEVICE``, which ``using(ceilings)`` switches. The per-kernel formulas do not
depend on the device.

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
calibration points, which are the H100 baselines of docs/design.md.

The reports built on it (the prediction tables of ``kernels/README.md`` and the tuning log,
the calibration,
the sensitivity study) are a developer tool: ``dawin_fast.kernel_tools.traffic_model``.
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


# H100 SXM (measured there: docs/design.md). L2 -> SM: cuBLAS needs >= 7.2
# TB/s to run B/32 fc1 in the measured 98 us; 7.5 matches the row-scaled probes.
H100 = Ceilings("H100 SXM", 690e12, 2.97e12, 7.5e12, 132, 50 * 10**6)
# H200 (docs/design.md: 4.3 TB/s copy, 769-798 TFLOP/s measured on such machines; 790
# taken). Same die as the H100: L2 -> SM kept at 7.5 TB/s (assumption,
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
    #: and fill, then the call's HBM floor and launch (``traffic_model.design_breakdown``)
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


def rowscaled(case: Case, block_m: int = 128, block_n: int = 128) -> Prediction:
    """Today's row-scaled kernel (M-times-longer K, every tile of x and W_i loaded per
    model), for calibration only: L2 and tensor costs, as if its combine were free."""
    m, k = case.num_models, case.k_dim
    programs = math.ceil(case.rows / block_m) * math.ceil(case.n_dim / block_n)
    per = _per_sm(flops=2 * block_m * block_n * k * m, l2=m * (block_m + block_n) * k * ELEM,
                  smem=m * 3 * (block_m + block_n) * k * ELEM)
    return _finish(programs, per, 0.0, _hbm_bytes(case))


def best(case: Case):
    """(name, prediction) of the fastest config of each new design."""
    from .fused_configs import EPILOGUE_CONFIGS, SWAPAB_CONFIGS

    out = {}
    for design, fn, configs in (("swapab", swapab, SWAPAB_CONFIGS),
                                ("epilogue", epilogue, EPILOGUE_CONFIGS)):
        preds = [(cfg.name, fn(case, cfg)) for cfg in configs]
        out[design] = min(preds, key=lambda p: p[1].seconds)
    return out
