"""The performance targets P1-P6 (docs/design.md), judged from benchmark records.

``evaluate(layer_records, e2e_records)`` returns one ``Verdict`` per target: the measured
ratio (the worst case for the layer targets), the target's bound, and whether it is met.
The records are those of ``dawin_fast.bench.layers`` (``Case.info`` fields, ``method``,
``median_ms``) and ``dawin_fast.bench.e2e`` (``method``, ``ms_per_image``,
``peak_extra_bytes``, ``layer_weight_bytes``). Nothing here measures: every number comes
from the records, so a summary table can only show what a run printed.

Statuses: "met"; "not met" (a measured case misses the bound); "incomplete" (nothing
measured misses it, but a case or baseline the target needs has no time).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Iterable

MET, NOT_MET, INCOMPLETE = "met", "not met", "incomplete"

#: Target id -> (what it covers, its bound), as docs/design.md states them.
TARGETS = {
    "P1": ("one group, >= 8k rows, ViT-B/32, B/16, L/14 layers, M=2",
           "fused <= 1.15 x premerged (cuBLAS), and faster than torch.compile max-autotune "
           "materialize + linear"),
    "P2": ("per-sample groups (each image its own coefficients), 256 images, M=2",
           "fused <= 2 x premerged over the same rows, and >= 20 x faster than the per-sample "
           "materialize loop"),
    "P3": ("one group, <= 512 rows (memory-bound)",
           "fused <= 1.3 x premerged (GB/s against reading the M weights once)"),
    "P4": ("M = 8, one group, >= 8k rows", "fused <= 1.5 x premerged"),
    "P5": ("whole DaWin, open_clip ViT-B/32, 1024 images, M=2",
           "<= 3.3 x one plain forward with K = 3; <= 4 x with per-sample coefficients; "
           ">= 100 x faster than the authors' per-sample rebuild loop"),
    "P6": ("memory of a DaWin ViT forward",
           "extra peak GPU memory over one plain forward <= one layer's merged weight"),
}

LIMITS = {"P1": 1.15, "P2": 2.0, "P3": 1.3, "P4": 1.5}
P2_LOOP_SPEEDUP = 20.0
P5_MIXTURE, P5_PER_SAMPLE, P5_REBUILD = 3.3, 4.0, 100.0
ELEMENT_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclasses.dataclass
class CaseResult:
    """One case (or e2e comparison) of a target: the ratios, and whether they hold."""

    case: str
    values: dict[str, str]  # column -> formatted number
    status: str


@dataclasses.dataclass
class Verdict:
    target: str
    covers: str
    bound: str
    measured: str  # the headline number(s)
    status: str
    cases: list[CaseResult]
    columns: list[str]


def _times(records: Iterable[dict]) -> dict[str, dict[str, dict]]:
    """case id -> method -> record, for records with a time."""
    out: dict[str, dict[str, dict]] = {}
    for r in records:
        if r.get("median_ms") is not None:
            out.setdefault(r["case"], {})[r["method"]] = r
    return out


def _cases_of(records: Iterable[dict], target: str) -> list[dict]:
    """One record per case of ``target`` (its parameters), in first-seen order."""
    seen: dict[str, dict] = {}
    for r in records:
        if r.get("target") == target and r["case"] not in seen:
            seen[r["case"]] = r
    return list(seen.values())


def _status(statuses: list[str]) -> str:
    if not statuses:
        return INCOMPLETE
    if NOT_MET in statuses:
        return NOT_MET
    return INCOMPLETE if INCOMPLETE in statuses else MET


def _fmt(value: float | None, unit: str = "x") -> str:
    return "–" if value is None else f"{value:.2f}{unit}"


def _best_strategy(methods: dict[str, dict], floor: float) -> str:
    """The fastest forced strategy of a case, as 'fused_x 1.23x'."""
    forced = {m: r["median_ms"] for m, r in methods.items() if m.startswith("fused_")}
    if not forced:
        return "–"
    method = min(forced, key=forced.get)
    return f"{method.removeprefix('fused_')} {forced[method] / floor:.2f}x"


def _layer_target(target: str, records: list[dict]) -> Verdict:
    times = _times(records)
    limit = LIMITS[target]
    columns = ["fused / premerged", "kernel", "best strategy / premerged"]
    if target == "P1":
        columns.append("compiled / fused")
    if target == "P2":
        columns.append("loop / fused")
    if target == "P3":
        columns.append("fused GB/s (M weights once)")
    results, ratios = [], []
    for info in _cases_of(records, target):
        methods = times.get(info["case"], {})
        fused, floor = methods.get("fused"), methods.get("premerged")
        ratio = fused["median_ms"] / floor["median_ms"] if fused and floor else None
        checks = [INCOMPLETE if ratio is None else MET if ratio <= limit else NOT_MET]
        values = {"fused / premerged": _fmt(ratio),
                  "kernel": (fused or {}).get("kernel") or "–",
                  "best strategy / premerged": (_best_strategy(methods, floor["median_ms"])
                                                if floor else "–")}
        if ratio is not None:
            ratios.append((ratio, info["case"]))
        if target == "P1":
            compiled = methods.get("materialize_compiled")
            speed = compiled["median_ms"] / fused["median_ms"] if compiled and fused else None
            checks.append(INCOMPLETE if speed is None else MET if speed > 1 else NOT_MET)
            values["compiled / fused"] = _fmt(speed)
        if target == "P2":
            loop = methods.get("materialize_loop")
            speed = loop["median_ms"] / fused["median_ms"] if loop and fused else None
            checks.append(INCOMPLETE if speed is None
                          else MET if speed >= P2_LOOP_SPEEDUP else NOT_MET)
            values["loop / fused"] = _fmt(speed)
        if target == "P3":
            weight_bytes = (info["num_models"] * info["out_features"] * info["in_features"]
                            * ELEMENT_BYTES.get(info["dtype"], 2))
            values["fused GB/s (M weights once)"] = (
                f"{weight_bytes / (fused['median_ms'] * 1e-3) / 1e9:.0f}" if fused else "–")
        results.append(CaseResult(info["case"], values, _status(checks)))
    if ratios:
        worst = max(ratios)
        measured = (f"worst {worst[0]:.2f}x ({worst[1]}), median "
                    f"{statistics.median(r for r, _ in ratios):.2f}x over {len(ratios)} cases")
    else:
        measured = "not measured"
    status = _status([r.status for r in results])
    covers, bound = TARGETS[target]
    return Verdict(target, covers, bound, measured, status, results, columns)


def _e2e_by_method(records: Iterable[dict]) -> dict[str, dict]:
    return {r["method"]: r for r in records if r.get("ms_per_image") is not None}


def _p5(records: list[dict]) -> Verdict:
    by = _e2e_by_method(records)
    comparisons = [
        ("dawin_mixture / plain_forward", "dawin_mixture", "plain_forward", P5_MIXTURE, "<="),
        ("dawin_per_sample / plain_forward", "dawin_per_sample", "plain_forward", P5_PER_SAMPLE,
         "<="),
        ("rebuild_per_sample / dawin_per_sample", "rebuild_per_sample", "dawin_per_sample",
         P5_REBUILD, ">="),
    ]
    results, headline = [], []
    for label, top, bottom, bound, op in comparisons:
        a, b = by.get(top, {}).get("ms_per_image"), by.get(bottom, {}).get("ms_per_image")
        ratio = a / b if a and b else None
        if ratio is None:
            status = INCOMPLETE
        else:
            status = MET if (ratio <= bound if op == "<=" else ratio >= bound) else NOT_MET
        results.append(CaseResult(label, {"ratio (per image)": _fmt(ratio),
                                          "bound": f"{op} {bound:g}x"}, status))
        headline.append(f"{top.removeprefix('dawin_')}: {_fmt(ratio)} ({op} {bound:g}x)")
    covers, bound = TARGETS["P5"]
    return Verdict("P5", covers, bound, "; ".join(headline), _status([r.status for r in results]),
                   results, ["ratio (per image)", "bound"])


def _p6(records: list[dict]) -> Verdict:
    by = {r["method"]: r for r in records}
    plain = by.get("plain_forward", {}).get("peak_extra_bytes")
    results, headline = [], []
    judged = ("merged_forward_k3", "merged_forward_per_sample")
    shown = judged + ("wise_ft", "dawin_mixture", "dawin_per_sample")
    for method in shown:
        r = by.get(method)
        if r is None:
            continue
        extra, bound = r.get("peak_extra_bytes"), r.get("layer_weight_bytes")
        over = extra - plain if extra is not None and plain is not None else None
        if method not in judged:
            status = "(not judged)"
        elif over is None or bound is None:
            status = INCOMPLETE
        else:
            status = MET if over <= bound else NOT_MET
        mib = (lambda b: "–" if b is None else f"{b / 2**20:.2f} MiB")
        results.append(CaseResult(method, {"peak extra": mib(extra),
                                           "over plain forward": mib(over),
                                           "one layer's merged weight": mib(bound)}, status))
        if method in judged:
            headline.append(f"{method}: {mib(over)} over plain (bound {mib(bound)})")
    covers, bound = TARGETS["P6"]
    statuses = [r.status for r in results if r.case in judged]
    if len(statuses) < len(judged):
        statuses.append(INCOMPLETE)
    return Verdict("P6", covers, bound, "; ".join(headline) or "not measured",
                   _status(statuses), results,
                   ["peak extra", "over plain forward", "one layer's merged weight"])


def evaluate(layer_records: list[dict], e2e_records: list[dict]) -> list[Verdict]:
    """P1-P6 from the records of one device (layer cases carry their ``target``)."""
    return [*(_layer_target(t, layer_records) for t in ("P1", "P2", "P3", "P4")),
            _p5(e2e_records), _p6(e2e_records)]


def render_summary(verdicts: list[Verdict]) -> str:
    """The P1-P6 table, then one table per target with its cases."""
    lines = ["| target | covers | bound | measured | status |", "|---|---|---|---|---|"]
    for v in verdicts:
        lines.append(f"| {v.target} | {v.covers} | {v.bound} | {v.measured} | "
                     f"**{v.status}** |")
    for v in verdicts:
        lines += ["", f"#### {v.target}: {v.status}", "",
                  "| case | " + " | ".join(v.columns) + " | status |",
                  "|---|" + "---|" * (len(v.columns) + 1)]
        if not v.cases:
            lines.append("| (no measurement) |" + " – |" * len(v.columns) + f" {v.status} |")
        for c in v.cases:
            lines.append(f"| {c.case} | " + " | ".join(c.values.get(col, "–")
                                                      for col in v.columns)
                         + f" | {c.status} |")
    return "\n".join(lines)
