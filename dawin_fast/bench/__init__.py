"""Benchmark harnesses: the layer cases (fused op against cuBLAS on a pre-merged weight,
materialize + linear, ``torch.compile``, grouped GEMM) and the end-to-end DaWin run
against the authors' rebuild loops. Used by ``benchmarks/`` and ``dawin-fast bench``.

May import: ``dawin_fast.ops``, ``algorithm``, ``nn``, ``pipeline`` (not ``app``). Returns
records and markdown; printing and files are the caller's (``app``, ``benchmarks/``).
"""
