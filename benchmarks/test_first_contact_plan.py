"""The first-contact plan counts what its children run (CPU only, no GPU involved).

* e2e: every fused call the e2e methods make, traced on the toy ViT, is in the plan's
  call list (``first_contact.e2e_calls``), and nothing else is.
* numerics: no two cases run the same kernel on the same call (a forced "rowscaled" is the
  epilogue kernel on Hopper).
* the children run the model's dispatch (``DAWIN_FAST_MEASURE=0``), whatever the driver's
  environment says.
* the Triton cache build refuses any Triton but the GPU machine's.
"""

from __future__ import annotations

import pytest

from benchmarks import first_contact, gpu_session, triton_cache


def test_the_e2e_plan_holds_every_fused_call_of_the_e2e_methods(monkeypatch):
    from dawin_fast import ops
    from dawin_fast.bench import e2e

    case = e2e.default_case()  # the toy ViT on a CPU: patch embedding, blocks, proj, head
    setup = e2e.make_setup(case)
    traced, original = set(), ops._interp_linear_op
    for method in e2e.METHODS:
        def recording(x, weight, coeffs, offsets, bias, method=method):
            traced.add((method, x.shape[0], coeffs.shape[0], *weight.shape))
            return original(x, weight, coeffs, offsets, bias)

        monkeypatch.setattr(ops, "_interp_linear_op", recording)
        fn, _ = e2e.build(method, setup)
        fn()
    planned = set(first_contact.e2e_calls(case))
    assert traced == planned
    # The projection ([width -> output_dim] on one row per image) and the head are in it.
    width, images = case.vit["width"], case.images
    assert ("wise_ft", images, 1, 2, case.vit["output_dim"], width) in planned
    assert ("wise_ft", images, 1, 2, case.classes, case.vit["output_dim"]) in planned


def test_the_plan_compiles_the_head_apart():
    """N = 1000 (the head) is not a multiple of 16: Triton specializes it apart from N =
    1008, which shares its config."""
    import torch

    for strategy in ("epilogue", "swapab"):
        work = first_contact.Work()
        for n in (1000, 1008):
            first_contact.call_work(work, "e2e", strategy, 1024, 1, 2, n, 512, torch.bfloat16,
                                    gluon=False)
        assert len(work.compiles) == 2, (strategy, work.compiles)
    work = first_contact.Work()
    first_contact.plan_e2e(work, gluon=True)
    shapes = {(call[4], call[5]) for call in work.calls.values()}  # (N, K) of each variant
    assert (1000, 512) in shapes and (512, 768) in shapes and (768, 3072) in shapes


def test_no_two_numerics_cases_run_the_same_kernel_on_the_same_call():
    from dawin_fast.bench import numerics
    from dawin_fast.kernels import dispatch

    cases = first_contact.numerics_cases(toy=False)
    target = first_contact.hopper_target(gluon=True)
    served = [(dispatch.served_by(c.strategy, target, c.dtype, False), c.dtype, c.num_models,
               c.k_dim, c.n_dim, c.rows, c.grouping) for c in cases]
    assert len(set(served)) == len(served)
    every = numerics.production_cases()
    assert {c.strategy for c in every} - {c.strategy for c in cases} == {"rowscaled"}
    assert len(cases) == len(every) - sum(c.strategy == "rowscaled" for c in every)
    # The kernel the items name is the served one.
    items = first_contact.items("numerics", toy=False, gluon=True)
    assert not any("rowscaled" in i.kernel for i in items)
    assert {i.kernel for i in items if i.gluon} == {"swapab (Gluon)", "wstat (Gluon)"}


def test_children_run_the_models_dispatch(monkeypatch):
    monkeypatch.setenv("DAWIN_FAST_MEASURE", "1")
    assert gpu_session.child_env(gluon=True)["DAWIN_FAST_MEASURE"] == "0"
    assert gpu_session.child_env(gluon=None)["DAWIN_FAST_MEASURE"] == "0"


def test_the_cache_build_refuses_another_triton(tmp_path, capsys, monkeypatch):
    assert triton_cache.check_triton("3.6.0") == "3.6.0"
    with pytest.raises(triton_cache.WrongTriton, match="needs Triton 3.6.0.*found Triton 3.8"):
        triton_cache.check_triton("3.8.0")
    import triton

    monkeypatch.setattr(triton, "__version__", "3.8.0")
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "manifest.json").write_text("{}")
    assert triton_cache.main(["build", str(kept)]) == 2
    assert "needs Triton 3.6.0" in capsys.readouterr().err
    assert (kept / "manifest.json").exists()  # refused before anything was removed
