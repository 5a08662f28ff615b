"""Developer tools for the kernels (installed as ``dawin_fast.kernel_tools``).

- ``compile_gate``: builds every kernel variant the kernel modules declare
  (``kernels/gate_spec.py``) for sm_90a, sm_80 and sm_89 on a CPU and checks the compiled
  code; writes ``kernels/compiled.{json,md}``.
- ``sass_hazard``: the SASS check for a write to a pending wgmma's register-A operand.
- ``traffic_model``: reports of the traffic model (``kernels/cost_model.py``): the
  prediction tables of ``kernels/README.md``, calibration, sensitivity.

May import ``dawin_fast.kernels`` (and Triton), nothing else of dawin_fast, and may do I/O
(subprocesses, files, reports). Nothing in dawin_fast or kernels/ imports it: tests,
benchmarks and developers run it. ``tests/test_layering.py`` holds both rules.
"""
