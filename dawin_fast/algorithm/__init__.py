"""The DaWin algorithm: expertise scores, interpolation coefficients, mixtures, grouping.

Pure functions and small estimators on logits and coefficient tables (torch, NumPy,
SciPy). They know nothing of models or kernels.

May import: only modules of this folder (no ``dawin_fast.ops``, ``nn``, ``pipeline``,
``bench``, ``app`` or ``kernels``). No I/O, no printing.
"""
