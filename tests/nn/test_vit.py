"""DaWinViT and DaWinClassifier against open_clip models with interpolated state dicts.

Backends: "torch" (the PyTorch path) and "triton" (the Triton kernels, through the
interpreter on a CPU). fp32 on the CPU; on a GPU also bf16.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dawin_fast
from dawin_fast import DaWinClassifier, DaWinViT
from dawin_fast.nn import Routing, route
from dawin_fast.nn.grouped import make_grouping
from tests.devices import BACKENDS, backend_device, run_backend
from tests.models import interpolate_model, per_sample_reference, tiny_open_clip_visual

TOL = dict(rtol=1e-4, atol=1e-4)


def images(batch=5, seed=0):
    return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_models", [2, 4])
@torch.no_grad()
def test_one_row_equals_interpolated_open_clip(backend, num_models):
    visuals = [tiny_open_clip_visual(seed) for seed in range(num_models)]
    model = DaWinViT.from_open_clip(visuals)
    row = torch.randn(num_models, generator=torch.Generator().manual_seed(1))
    x = images()
    got = run_backend(backend, lambda *a: a[0](*a[1:]), model, x, row)
    torch.testing.assert_close(got, interpolate_model(visuals, row)(x), **TOL)


@pytest.mark.parametrize("backend", BACKENDS)
@torch.no_grad()
def test_per_sample_rows(backend):
    visuals = [tiny_open_clip_visual(seed) for seed in range(2)]
    model = DaWinViT.from_open_clip(visuals)
    lam = torch.tensor([0.9, 0.1, 0.5, 0.1, 0.3])  # a repeated row shares a group
    rows = torch.stack([1 - lam, lam], dim=1)
    x = images()
    got = run_backend(backend, lambda *a: a[0](*a[1:]), model, x, rows)
    torch.testing.assert_close(got, per_sample_reference(visuals, rows, x), **TOL)


@pytest.mark.parametrize("backend", BACKENDS)
@torch.no_grad()
def test_mixture_equals_per_sample_with_component_means(backend):
    visuals = [tiny_open_clip_visual(seed) for seed in range(3)]
    model = DaWinViT.from_open_clip(visuals)
    table = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [2.0, -1.0, 0.0]])
    labels = torch.tensor([3, 0, 2, 0, 3, 1, 0])  # unsorted, group 1 and 3 share samples
    x = images(7)
    got = run_backend(backend, lambda m, *a: m(*a[:2], labels=a[2]), model, x, table, labels)
    per_sample = run_backend(backend, lambda *a: a[0](*a[1:]), model, x, table[labels])
    torch.testing.assert_close(got, per_sample, **TOL)
    torch.testing.assert_close(got, per_sample_reference(visuals, table[labels], x), **TOL)


@torch.no_grad()
def test_batch_order_is_preserved_for_any_clustering():
    visuals = [tiny_open_clip_visual(seed) for seed in range(2)]
    model = DaWinViT.from_open_clip(visuals)
    x = images(9)
    table = torch.tensor([[0.7, 0.3], [0.1, 0.9]])
    labels = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 1])
    got = model(x, table, labels=labels)
    for b in range(9):
        alone = model(x[b : b + 1], table[labels[b]])
        torch.testing.assert_close(got[b : b + 1], alone, **TOL)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(x[perm], table, labels=labels[perm]), got[perm], **TOL)


@pytest.mark.parametrize("overrides", [
    dict(pool_type="avg"),
    dict(final_ln_after_pool=True),
    dict(ls_init_value=0.5),
    dict(no_ln_pre=True),
    dict(output_tokens=True),
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@torch.no_grad()
def test_open_clip_variants(overrides):
    visuals = [tiny_open_clip_visual(seed, **overrides) for seed in range(2)]
    model = DaWinViT.from_open_clip(visuals)
    rows = torch.tensor([[0.6, 0.4], [0.1, 0.9], [0.6, 0.4]])
    x = images(3)
    got = model(x, rows)
    if overrides.get("output_tokens"):
        pooled, tokens = got
        ref = [interpolate_model(visuals, rows[b])(x[b : b + 1]) for b in range(3)]
        torch.testing.assert_close(pooled, torch.cat([r[0] for r in ref]), **TOL)
        torch.testing.assert_close(tokens, torch.cat([r[1] for r in ref]), **TOL)
    else:
        torch.testing.assert_close(got, per_sample_reference(visuals, rows, x), **TOL)


@pytest.mark.parametrize("backend", BACKENDS)
@torch.no_grad()
def test_classifier_interpolates_heads_too(backend):
    visuals = [tiny_open_clip_visual(seed) for seed in range(2)]
    gen = torch.Generator().manual_seed(3)
    zero_shot_head = torch.randn(10, 12, generator=gen)  # [C, D] from text embeddings
    fine_tuned_head = nn.Linear(12, 10, bias=False)
    with torch.no_grad():
        fine_tuned_head.weight.copy_(torch.randn(10, 12, generator=gen))
    clf = DaWinClassifier(DaWinViT.from_open_clip(visuals), [zero_shot_head, fine_tuned_head])
    lam = torch.tensor([0.2, 0.8, 0.5, 0.0])
    rows = torch.stack([1 - lam, lam], dim=1)
    x = images(4)
    got = run_backend(backend, lambda *a: a[0](*a[1:]), clf, x, rows)
    for b in range(4):
        visual = interpolate_model(visuals, rows[b])
        head = rows[b, 0] * zero_shot_head + rows[b, 1] * fine_tuned_head.weight
        features = torch.nn.functional.normalize(visual(x[b : b + 1]), dim=-1)
        torch.testing.assert_close(got[b : b + 1], features @ head.T, **TOL)


@torch.no_grad()
def test_empty_batch():
    model = DaWinViT.from_open_clip([tiny_open_clip_visual(s) for s in range(2)])
    assert model(images(0), torch.zeros(0, 2)).shape == (0, 12)
    assert model(images(0), torch.tensor([0.5, 0.5])).shape == (0, 12)


def test_rejects_mismatched_models_and_bad_input():
    a, b = tiny_open_clip_visual(0), tiny_open_clip_visual(1, width=48)
    with pytest.raises(ValueError, match="'class_embedding' differs"):
        DaWinViT.from_open_clip([a, b])
    with pytest.raises(ValueError, match="patch_size|differs"):
        DaWinViT.from_open_clip([a, tiny_open_clip_visual(1, patch_size=8)])
    with pytest.raises(TypeError, match="not an open_clip VisionTransformer"):
        DaWinViT.from_open_clip([a, nn.Linear(3, 3)])
    with pytest.raises(ValueError, match="at least one"):
        DaWinViT.from_open_clip([])
    model = DaWinViT.from_open_clip([a, tiny_open_clip_visual(1)])
    x = images(4)
    with pytest.raises(ValueError, match="coeffs must be"):
        model(x, torch.ones(4, 3))
    with pytest.raises(ValueError, match="rows for a batch of 4"):
        model(x, torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
        model(x, torch.ones(2, 2), labels=torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match=r"labels must be \[B\]"):
        model(x, torch.ones(2, 2), labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="NaN"):
        model(x, torch.tensor([[float("nan"), 1.0]] * 4))
    with pytest.raises(ValueError, match=r"images must be \[B, C, H, W\]"):
        model(torch.randn(4, 3, 16), torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="heads for an encoder of 2"):
        DaWinClassifier(model, [torch.randn(3, 12)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 and the compiled kernels "
                    "need a GPU (CPU runs cover fp32 through the interpreter)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_gpu_equivalence(dtype):
    visuals = [tiny_open_clip_visual(seed).cuda().to(dtype) for seed in range(2)]
    model = DaWinViT.from_open_clip(visuals)
    x = images(6).cuda().to(dtype)
    lam = torch.rand(6, generator=torch.Generator().manual_seed(0))
    rows = torch.stack([1 - lam, lam], dim=1).cuda()
    got = model(x, rows).float()
    ref = per_sample_reference([v.float() for v in visuals], rows.float(), x.float()).float()
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=5e-2, atol=5e-2)
    torch.testing.assert_close(got, ref, **tol)


def _prebuilt(model, x, coeffs, labels=None):
    """The host-side half of a DaWinViT call, done once: the grouping (sorting the batch)
    and the validated routing. What a CUDA graph captures is the other half, the routed
    forward of the sorted batch, which synchronises with the host nowhere."""
    grouping = make_grouping(coeffs, labels, x.shape[0], model.num_models)
    if grouping is None:  # one row for the whole batch
        return None, Routing(coeffs.reshape(1, -1))
    return grouping, Routing(grouping.coeffs, grouping.offsets)


def _graph_inputs(kind, batch, device, seed):
    """(coeffs, labels, per-sample rows) of one routing kind, on ``device``."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "per_sample":
        lam = torch.rand(batch, generator=gen)
        rows = torch.stack([1 - lam, lam], dim=1)
        return rows.to(device), None, rows
    if kind == "clusters":
        lam = torch.rand(3, generator=gen)
        table = torch.stack([1 - lam, lam], dim=1)
        labels = torch.tensor([2, 0, 1, 0, 2, 2][:batch])
        return table.to(device), labels.to(device), table[labels]
    row = torch.rand(2, generator=gen)
    return row.to(device), None, row.expand(batch, -1)


@pytest.mark.parametrize("kind", ["per_sample", "clusters", "one_row"])
@torch.no_grad()
def test_prebuilt_routing_forward_is_the_model_call(kind):
    """The eager twin of what the CUDA-graph test captures: a routing built beforehand and
    the routed forward of the sorted batch give the model call's result, bit for bit."""
    model = DaWinViT.from_open_clip([tiny_open_clip_visual(seed) for seed in range(2)])
    x = images(6)
    coeffs, labels, _ = _graph_inputs(kind, 6, "cpu", seed=0)
    grouping, routing = _prebuilt(model, x, coeffs, labels)
    with route(routing):
        out = model.forward_routed(grouping.permute(x) if grouping else x)
    out = grouping.unpermute(out) if grouping else out
    assert torch.equal(out, model(x, coeffs, labels=labels))


def _check_replay(kind, dtype, device, use_graph):
    """Run a DaWinViT forward from static buffers: the sorted images and the routing's
    coefficient table. With ``use_graph`` the routed forward is captured once in a CUDA
    graph and replayed; without, it is simply called again (the eager stand-in that checks
    this harness on a CPU). After writing new images and new coefficient values (same
    groups) into the buffers, the result must equal the eager forward on those inputs bit
    for bit, and match the interpolated-state-dict reference."""
    visuals = [tiny_open_clip_visual(seed).to(device, dtype) for seed in range(2)]
    model = DaWinViT.from_open_clip(visuals)
    batch = 4
    coeffs, labels, _ = _graph_inputs(kind, batch, device, seed=0)
    x = images(batch).to(device, dtype)
    grouping, routing = _prebuilt(model, x, coeffs, labels)
    sort = (lambda t: grouping.permute(t)) if grouping else (lambda t: t)
    static_x = sort(x).clone()

    def forward():
        with route(routing):
            return model.forward_routed(static_x)

    if use_graph:
        # Warm up on a side stream (autotuning, compiles, the routing's index caches), as
        # torch.cuda.graph requires, then capture.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                forward()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = forward()
        replay = graph.replay
    else:
        static_out = forward()

        def replay():
            static_out.copy_(forward())

    # New images, and new coefficient values for the same groups (each group's row from
    # its samples' new rows), written into the buffers.
    _, _, new_rows = _graph_inputs(kind, batch, device, seed=1)
    new_x = images(batch, seed=1).to(device, dtype)
    static_x.copy_(sort(new_x))
    table = routing.coeffs.clone()
    if grouping is None:
        table[0] = new_rows[0]
    else:
        table[grouping.labels.to(table.device)] = new_rows.to(table)
    routing.coeffs.copy_(table)
    replay()
    if use_graph:
        torch.cuda.synchronize()
    replayed = static_out.clone()
    eager = forward()
    assert torch.equal(replayed, eager), (replayed.float() - eager.float()).abs().max()
    got = grouping.unpermute(replayed) if grouping else replayed
    ref = per_sample_reference([v.float().cpu() for v in visuals], new_rows.float().cpu(),
                               new_x.float().cpu()).float()
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=5e-2, atol=5e-2)
    torch.testing.assert_close(got.float().cpu(), ref, **tol)


@pytest.mark.parametrize("kind", ["per_sample", "clusters", "one_row"])
@torch.no_grad()
def test_routed_forward_reads_new_inputs_from_its_buffers(kind):
    """The CUDA-graph harness below, with the graph replaced by a second call (CPU)."""
    _check_replay(kind, torch.float32, "cpu", use_graph=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (the "
                    "eager stand-ins above run this harness on a CPU)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["per_sample", "clusters", "one_row"])
@torch.no_grad()
def test_cuda_graph_replay_equals_eager(dtype, kind):
    """A whole DaWinViT forward (patch embedding to projection, every fused layer) captured
    in one CUDA graph and replayed on new images and coefficients equals the eager forward."""
    _check_replay(kind, dtype, "cuda", use_graph=True)


class ShapeRecorder:
    """Records the shape of every tensor that an aten op produces while active (and its
    storage, so views of existing tensors, e.g. the stacked weights, can be told apart)."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        recorder = self
        self.shapes = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in out if isinstance(out, (tuple, list)) else [out]:
                    if isinstance(t, torch.Tensor):
                        recorder.shapes.append((str(func), tuple(t.shape),
                                                t.untyped_storage().data_ptr()))
                return out

        self.mode = Mode()

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)

    def matching(self, shapes, existing=()):
        """Produced tensors whose last two dims are in ``shapes``, except views of the
        tensors in ``existing``."""
        skip = {t.untyped_storage().data_ptr() for t in existing}
        return [(f, s) for f, s, ptr in self.shapes
                if len(s) >= 2 and s[-2:] in shapes and ptr not in skip]


@torch.no_grad()
def test_vit_forward_never_materializes_a_merged_weight():
    """Around the fused op (an opaque custom op here), the ViT's own code never produces a
    tensor shaped like a layer's weight [N, K]: no merged or stacked weight is built."""
    visuals = [tiny_open_clip_visual(seed) for seed in range(2)]
    model = DaWinViT.from_open_clip(visuals)
    weight_shapes = {tuple(m.weight.shape[-2:]) for m in model.modules()
                     if isinstance(m, dawin_fast.DaWinLinear)}
    assert {(96, 32), (32, 32), (64, 32), (32, 64)} <= weight_shapes  # qkv, out, fc1, fc2
    device = backend_device("triton")
    model = model.to(device)
    lam = torch.tensor([0.9, 0.1, 0.5])
    for coeffs in (torch.stack([1 - lam, lam], dim=1), torch.tensor([0.5, 0.5])):
        with dawin_fast.use_backend("triton"), ShapeRecorder() as recorder:
            model(images(3).to(device), coeffs.to(device))
        assert len(recorder.shapes) > 50, "the recorder saw too few ops"
        found = recorder.matching(weight_shapes, list(model.parameters()))
        assert not found, found[:5]


@pytest.mark.parametrize("strategy", ["combine", "rowscaled"])
@pytest.mark.parametrize("lengths", [[40], [10, 0, 30]])
@torch.no_grad()
def test_kernel_launcher_never_materializes_a_merged_weight(strategy, lengths):
    """Inside the fused path: the launcher's torch ops (the schedule) never produce a
    weight-shaped tensor. Positive control: the PyTorch path with few groups does merge
    one weight per group (its "loop" strategy), and the recorder sees it."""
    from dawin_fast import kernels
    from dawin_fast.ops import interp_linear_torch
    from tests.reference import offsets_from_lengths

    device = backend_device("triton")
    x, weight = torch.randn(40, 24, device=device), torch.randn(2, 56, 24, device=device)
    coeffs = torch.rand(len(lengths), 2, device=device)
    offsets = offsets_from_lengths(lengths, device=device)
    with ShapeRecorder() as recorder:
        kernels.interp_matmul(x, weight, coeffs, offsets, None, strategy=strategy)
    assert not recorder.matching({(56, 24)}, [weight])
    with ShapeRecorder() as control:
        interp_linear_torch(x, weight, coeffs[:1], torch.tensor([0, 40], device=device),
                            strategy="loop")
    assert control.matching({(56, 24)}, [weight]), "the recorder cannot see a merged weight"
