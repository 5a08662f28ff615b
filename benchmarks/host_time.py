"""Host time per call of ``interp_linear`` at tiny shapes, beside ``nn.Linear``'s.

    python -m benchmarks.host_time [--calls 2000] [--repeats 5]

At tiny shapes a call's time is its host work: the checks, the value check's host read,
the dispatch's decision and the launch. Four cases on this CPU, each the fastest of
``--repeats`` loops of ``--calls`` calls, in microseconds per call:

* ``nn.Linear``: ``F.linear`` on the same rows (the floor);
* ``interp_linear (PyTorch path)``: CPU tensors, two groups;
* ``DaWinLinear x12``: a 12-layer stack fed the same ``coeffs`` and ``offsets``, per layer;
* ``interp_linear (faked Hopper)``: the Triton path with the device faked as an H100 with
  Gluon (``dispatch.target_for``) and the kernel launch itself skipped
  (``PlannedLaunch.run``): everything a CUDA call does on the host but the launch.

Measuring is off (``DAWIN_FAST_MEASURE=0``) unless ``--measure``: the numbers are the
model's path. The CPU may be shared with other work, so expect noise: compare runs made
side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

ROWS, K, N, M = 16, 64, 64, 2


def per_call_us(fn: Callable[[], object], calls: int, repeats: int) -> float:
    for _ in range(min(calls, 50)):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / calls * 1e6


@contextlib.contextmanager
def faked_hopper() -> Iterator[None]:
    """CPU tensors take the compiled-kernel path of an H100 with Gluon; nothing launches."""
    from dawin_fast import ops
    from dawin_fast.kernels import dispatch, planned

    def target_for(x: torch.Tensor, weight: torch.Tensor) -> dispatch.Target:
        half = x.dtype in (torch.float16, torch.bfloat16)
        return dispatch.Target(cuda=True, half=half, gluon=half, hopper=True)

    saved = [(dispatch, "target_for"), (ops, "_use_triton"), (planned.PlannedLaunch, "run")]
    old = [getattr(obj, name) for obj, name in saved]
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "0"
    dispatch.target_for = target_for
    ops._use_triton = lambda x: True
    planned.PlannedLaunch.run = lambda self: None
    try:
        yield
    finally:
        for (obj, name), value in zip(saved, old, strict=True):
            setattr(obj, name, value)
        if previous is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = previous


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--measure", action="store_true",
                        help="leave the measured dispatch on (DAWIN_FAST_MEASURE)")
    args = parser.parse_args(argv)
    if not args.measure:
        os.environ["DAWIN_FAST_MEASURE"] = "0"
    torch.set_num_threads(1)
    from dawin_fast import interp_linear
    from dawin_fast.nn import DaWinLinear

    torch.manual_seed(0)
    x = torch.randn(ROWS, K)
    weight = torch.randn(M, N, K) / K**0.5
    bias = torch.randn(M, N)
    coeffs = torch.tensor([[0.3, 0.7], [0.6, 0.4]])
    offsets = torch.tensor([0, ROWS // 2, ROWS])
    linear = torch.nn.Linear(K, N)
    layers = [DaWinLinear(K, N, M) for _ in range(12)]
    for layer in layers:
        layer.requires_grad_(False)

    def stack() -> None:
        for layer in layers:
            layer(x, coeffs, offsets)

    half = x.half(), weight.half(), bias.half()
    rows = {}
    with torch.no_grad():
        rows["nn.Linear"] = per_call_us(lambda: F.linear(x, linear.weight, linear.bias),
                                        args.calls, args.repeats)
        rows["interp_linear (PyTorch path)"] = per_call_us(
            lambda: interp_linear(x, weight, coeffs, offsets, bias), args.calls, args.repeats)
        rows["DaWinLinear x12, per layer"] = per_call_us(
            stack, max(args.calls // 12, 1), args.repeats) / 12
        with faked_hopper():
            rows["interp_linear (faked Hopper, fp16)"] = per_call_us(
                lambda: interp_linear(half[0], half[1], coeffs, offsets, half[2]),
                args.calls, args.repeats)
    width = max(map(len, rows))
    print(f"host time per call, x [{ROWS}, {K}], weight [{M}, {N}, {K}], 2 groups, "
          f"1 thread (fastest of {args.repeats} x {args.calls} calls)")
    for name, us in rows.items():
        print(f"  {name:<{width}}  {us:8.1f} us")


if __name__ == "__main__":
    main()
