"""Triton kernels of dawin_fast (installed as ``dawin_fast.kernels``).

Pure kernels, their configs and launchers (with the cost model the dispatch ranks by, and
each kernel's declaration of what the compile gate builds, ``gate_spec``): they know linear
algebra, not DaWin. Imports Triton and nothing of dawin_fast; the tools that build, check
and report on these kernels live in ``dawin_fast.kernel_tools``.

The folder is never the top-level ``kernels``: that name belongs to Hugging Face's package
(transformers >= 5 requires it). A Python started in the repository root has the root on
``sys.path`` first, so ``import kernels`` would find this folder; it then hands the name to
the installed distribution (``_hand_over_top_level_name``) or, when none is installed,
fails as if the folder were not there.
"""

if __name__ == "kernels":
    import importlib.machinery
    import importlib.util
    import os
    import sys

    def _hand_over_top_level_name() -> None:
        """Replace this module in ``sys.modules`` by the installed top-level ``kernels``.

        The import system returns whatever ``sys.modules["kernels"]`` holds once this body
        ends, so ``import kernels`` (and ``kernels.<sub>``, through the new ``__path__``)
        resolve to the other distribution. Search every ``sys.path`` entry but the one this
        folder sits in, then every other meta-path finder (editable installs).
        """
        here = os.path.dirname(os.path.abspath(__file__))
        root = os.path.dirname(here)

        def elsewhere(entry: str) -> bool:
            try:
                return not os.path.samefile(entry or os.curdir, root)
            except OSError:
                return True

        spec = importlib.machinery.PathFinder.find_spec(
            "kernels", [p for p in sys.path if isinstance(p, str) and elsewhere(p)])
        if spec is None:
            for finder in sys.meta_path:
                if finder is importlib.machinery.PathFinder:
                    continue
                find = getattr(finder, "find_spec", None)
                found = find("kernels", None) if find is not None else None
                if found is not None and found.origin and os.path.dirname(
                        os.path.abspath(found.origin)) != here:
                    spec = found
                    break
        if spec is None or spec.loader is None:
            del sys.modules["kernels"]
            raise ModuleNotFoundError(
                "No module named 'kernels' (the repository's kernels/ folder is "
                "dawin_fast.kernels, never the top-level kernels)", name="kernels")
        module = importlib.util.module_from_spec(spec)
        sys.modules["kernels"] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop("kernels", None)
            raise

    _hand_over_top_level_name()
else:
    from . import registry, strategies  # strategies: registers them
    from .configs import interpreting
    from .interp_matmul import (
        candidates,
        choose_strategy,
        default_strategy,
        interp_matmul,
    )

    #: The strategies registered at import (``registry.names()`` holds later ones too).
    STRATEGIES = registry.names()

    __all__ = ["STRATEGIES", "candidates", "choose_strategy", "default_strategy",
               "interp_matmul", "interpreting", "registry", "strategies"]
