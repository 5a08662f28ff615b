"""The dispatch's decisions for a fixed table of calls, on faked targets.

For every (target, call) the table holds what ``kernel_choice`` reports (strategy, config,
implementation, how chosen) and, on CUDA targets, the measured dispatch's candidates
(``kernels.candidates``). ``tests/kernels/test_decisions.py`` holds the code to the stored
table (``decisions.json``), so a refactor of the selection layer cannot change a decision
unnoticed; an intended change regenerates it (``python -m tests.kernels.decisions``) and
says why in the commit.

No GPU is needed: CUDA devices are faked the way the dispatch tests fake them, by the
``Target`` the call's facts give (``dispatch.target_for``), with the kernels compiled (not
interpreted) and the Triton path taken. Tensors are allocated, never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from dawin_fast import kernels, measured, ops
from dawin_fast.kernels import arch, dispatch

TABLE = Path(__file__).with_name("decisions.json")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _cuda_target(hopper: bool, gluon: bool, smem_limit: int):
    def target_for(x: torch.Tensor, weight: torch.Tensor) -> dispatch.Target:
        half = x.dtype in (torch.float16, torch.bfloat16)
        return dispatch.Target(cuda=True, half=half, gluon=gluon and half and hopper,
                               hopper=hopper, smem_limit=smem_limit)
    return target_for


#: name -> faked CUDA target (None: no GPU). Gluon is opt-in (DAWIN_FAST_GLUON=1), so an
#: H100 appears with and without it; the H200 has the H100's architecture and limit.
CUDA_TARGETS = {
    "H100": _cuda_target(True, False, arch.HOPPER.smem_limit),
    "H100 Gluon": _cuda_target(True, True, arch.HOPPER.smem_limit),
    "H200 Gluon": _cuda_target(True, True, arch.HOPPER.smem_limit),
    "A100": _cuda_target(False, False, arch.AMPERE.smem_limit),
    "Ada": _cuda_target(False, False, arch.ADA.smem_limit),
}
TARGETS = (*CUDA_TARGETS, "CPU", "interpreter")

# (suite, layer) -> (K, N): ViT-B/32 and ViT-L/14 (bench.layers.layer_features), Llama-3-8B.
LAYERS = {
    ("ViT-B-32", "qkv"): (768, 2304), ("ViT-B-32", "out_proj"): (768, 768),
    ("ViT-B-32", "fc1"): (768, 3072), ("ViT-B-32", "fc2"): (3072, 768),
    ("ViT-L-14", "fc1"): (1024, 4096), ("ViT-L-14", "fc2"): (4096, 1024),
    ("Llama-3-8B", "qkv"): (4096, 6144), ("Llama-3-8B", "o_proj"): (4096, 4096),
    ("Llama-3-8B", "gate_up_proj"): (4096, 14336), ("Llama-3-8B", "down_proj"): (14336, 4096),
}
# suite -> grouping name -> (rows, groups)
GROUPINGS = {
    "ViT-B-32": {"one group": (256 * 50, 1), "clusters3": (256 * 50, 3),
                 "per-sample": (256 * 50, 256), "small batch": (8 * 50, 1)},
    "ViT-L-14": {"one group": (64 * 257, 1), "clusters3": (64 * 257, 3),
                 "per-sample": (256 * 257, 256)},
    "Llama-3-8B": {"prefill": (2048, 1), "prefill 8 seqs": (8 * 512, 8),
                   "decode 16": (16, 16), "decode 256": (256, 256)},
}
FORCED = ("combine", "rowscaled", "swapab", "epilogue", "wstat")


def calls() -> Iterator[tuple[str, dict]]:
    """(name, call) of every call in the table."""
    for (suite, layer), (k_dim, n_dim) in LAYERS.items():
        for grouping, (rows, groups) in GROUPINGS[suite].items():
            models = (2, 8) if layer == "fc1" and grouping == "one group" else (2,)
            for num_models in models:
                for dname in DTYPES:
                    call = dict(rows=rows, groups=groups, models=num_models, n=n_dim,
                                k=k_dim, dtype=dname, strategy=None)
                    yield f"{suite} {layer} {grouping} M={num_models} {dname}", call
    for grouping in ("one group", "per-sample"):  # every strategy forced
        rows, groups = GROUPINGS["ViT-B-32"][grouping]
        for dname in ("bf16", "fp32"):
            for strategy in FORCED:
                call = dict(rows=rows, groups=groups, models=2, n=3072, k=768, dtype=dname,
                            strategy=strategy)
                yield f"ViT-B-32 fc1 {grouping} M=2 {dname} forced {strategy}", call


@contextlib.contextmanager
def faked(target: str) -> Iterator[None]:
    """Make ``target`` the device of CPU tensors until the context ends."""
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if target == "interpreter" else "0"
    patch = _Patcher()
    try:
        if target in CUDA_TARGETS:
            patch(dispatch, "target_for", CUDA_TARGETS[target])
            patch(ops, "_use_triton", lambda x: True)
        yield
    finally:
        patch.undo()
        if previous is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = previous


class _Patcher:
    def __init__(self) -> None:
        self.saved: list[tuple[object, str, object]] = []

    def __call__(self, obj: object, name: str, value: object) -> None:
        self.saved.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    def undo(self) -> None:
        for obj, name, value in reversed(self.saved):
            setattr(obj, name, value)
        self.saved.clear()


def _tensors(call: dict):
    dtype = DTYPES[call["dtype"]]
    x = torch.empty((call["rows"], call["k"]), dtype=dtype)
    weight = torch.empty((call["models"], call["n"], call["k"]), dtype=dtype)
    coeffs = torch.empty((call["groups"], call["models"]), dtype=torch.float32)
    return x, weight, coeffs


def decide(target: str, call: dict) -> dict:
    """The decision for one call on one (already faked) target."""
    x, weight, coeffs = _tensors(call)
    with ops.use_strategy(call["strategy"]):
        out = {"choice": ops.kernel_choice(x, weight, coeffs)}
    if target in CUDA_TARGETS and call["strategy"] is None:
        out["candidates"] = [f"{s}:{c}" if c else s
                             for s, c in kernels.candidates(x, weight, call["groups"])]
    return out


def table() -> dict[str, dict]:
    """Every decision: "<target> | <call>" -> ``decide``'s answer (measuring off)."""
    out: dict[str, dict] = {}
    was = measured._enabled
    measured.set_enabled(False)
    try:
        for target in TARGETS:
            with faked(target):
                for name, call in calls():
                    out[f"{target} | {name}"] = decide(target, call)
    finally:
        measured.set_enabled(was)
    return out


if __name__ == "__main__":
    TABLE.write_text(json.dumps(table(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {TABLE}")
