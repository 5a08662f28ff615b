"""Backend benchmarks: the CPU dispatch and FusionBench's WEMoE, fused vs loops.

    python -m benchmarks.backend [--device cpu|cuda] [--repeats 5] [--only layer|wemoe]

* ``layer``: one ViT-B/32 fc1 (K=768, N=3072), 50 rows per sample, per-sample groups:
  ``interp_linear`` (its dispatch) vs a plain per-group loop (merge with einsum, then
  ``F.linear``), forward and forward+backward (gradients to x and the coefficients).
* ``wemoe``: one WEMoE layer at ViT-B/32 MLP shapes (768 -> 3072 -> 768, 50 tokens, T=8
  task vectors, depth-2 gate, per-sample): FusionBench's ``WeightEnsemblingMoE`` (a
  state-dict merge and ``functional_call`` per sample) vs ``FusedWeightEnsemblingMoE``,
  forward and forward+backward (to the gate); needs fusion_bench.

Times are medians over ``--repeats`` runs (min in brackets; the CPU is shared, so expect
noise). Memory: bytes the forward saved for backward (autograd's saved tensors, exact on
any device) and, on CUDA, the peak allocated above the inputs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from dawin_fast import interp_linear, skip_value_checks

K, N, TOKENS = 768, 3072, 50


def timed(fn, repeats: int, device: str) -> tuple[float, float]:
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times)


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves during ``fn()`` (each storage counted once)."""
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def peak_bytes(fn, device: str) -> int | None:
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def layer_cases(device: str, repeats: int):
    for num_models, batch in ((4, 16), (4, 64), (9, 16), (9, 64)):
        gen = torch.Generator().manual_seed(0)
        weight = (torch.randn(num_models, N, K, generator=gen) / 30).to(device)
        x = torch.randn(batch * TOKENS, K, generator=gen).to(device)
        coeffs = torch.rand(batch, num_models, generator=gen).to(device)
        offsets = (torch.arange(batch + 1) * TOKENS).to(device)

        def fused(x=x, c=coeffs, w=weight, o=offsets):
            with skip_value_checks():
                return interp_linear(x, w, c, o)

        def loop(x=x, c=coeffs, w=weight):
            return torch.cat([F.linear(x[g * TOKENS:(g + 1) * TOKENS],
                                       torch.einsum("m,mnk->nk", c[g], w))
                              for g in range(c.shape[0])])

        torch.testing.assert_close(fused(), loop(), rtol=1e-4, atol=1e-3)
        for name, fn in (("fused", fused), ("per-group loop", loop)):
            def step(fn=fn, x=x, coeffs=coeffs):
                xg = x.clone().requires_grad_(True)
                cg = coeffs.clone().requires_grad_(True)
                out = fn(xg, cg)
                out.backward(torch.ones_like(out))
            fwd = timed(lambda fn=fn: fn(), repeats, device)  # noqa: B023 (defaults bound)
            both = timed(step, repeats, device)
            yield (f"fc1 M={num_models} B={batch}", name, fwd, both, None, None)


def wemoe_cases(device: str, repeats: int):
    from fusion_bench.models.we_moe import WeightEnsemblingMoE
    from transformers.models.clip.configuration_clip import CLIPVisionConfig
    from transformers.models.clip.modeling_clip import CLIPMLP

    from dawin_fast.integrations.fusion_bench.models import FusedWeightEnsemblingMoE

    config = CLIPVisionConfig(hidden_size=K, intermediate_size=N)
    for batch in (4, 16):
        torch.manual_seed(0)
        mlps = [CLIPMLP(config) for _ in range(9)]
        moe = WeightEnsemblingMoE(K, mlps[0], mlps[1:], init_lambda=0.3, batch_first=True,
                                  router_hidden_layers=2, batch_reduce=False).to(device)
        fused = FusedWeightEnsemblingMoE.from_fusion_bench(moe).to(device)
        h = torch.randn(batch, TOKENS, K, device=device)
        with torch.no_grad():
            torch.testing.assert_close(fused(h), moe(h), rtol=1e-4, atol=1e-4)
        for name, module in (("fused", fused), ("FusionBench loop", moe)):
            def forward(module=module, h=h):
                with torch.no_grad():
                    return module(h)

            def step(module=module, h=h):
                module(h).sum().backward()

            fwd = timed(forward, repeats, device)
            both = timed(step, repeats, device)
            saved = saved_bytes(lambda module=module, h=h: module(h))
            yield (f"WEMoE T=8 B={batch}", name, fwd, both, saved, peak_bytes(step, device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", choices=["layer", "wemoe"])
    args = parser.parse_args()
    print(f"device {args.device} ({torch.get_num_threads()} threads), torch "
          f"{torch.__version__}, fp32, median [min] of {args.repeats} runs")
    print(f"{'case':<20} {'method':<17} {'forward ms':>18} {'fwd+bwd ms':>18} "
          f"{'saved MiB':>10} {'peak MiB':>9}")
    groups = {"layer": layer_cases, "wemoe": wemoe_cases}
    for key, cases in groups.items():
        if args.only not in (None, key):
            continue
        for case, name, fwd, both, saved, peak in cases(args.device, args.repeats):
            mib = (lambda b: "-" if b is None else f"{b / 2**20:.1f}")
            print(f"{case:<20} {name:<17} {fwd[0]:>9.1f} [{fwd[1]:>6.1f}] "
                  f"{both[0]:>9.1f} [{both[1]:>6.1f}] {mib(saved):>10} {mib(peak):>9}",
                  flush=True)


if __name__ == "__main__":
    main()
