"""dawin_fast: fused weight-interpolation kernels and modules for DaWin.

Layers: ``interp_linear`` (the fused op), ``DaWinLinear`` and the other modules in
``dawin_fast.nn``. Models: ``DaWinViT`` (open_clip), ``dawinize`` (any architecture;
Hugging Face causal LMs come back as ``DaWinCausalLM``), ``DaWinClassifier``. The method:
``DaWin`` / ``DaWinMultiTask`` (``DaWinLM`` for causal LMs), built on the expertise,
coefficient, mixture and grouping functions, which are usable on their own.

Package layout, bottom to top (each floor imports only the floors below it; a test,
``tests/test_layering.py``, holds the rule):

* ``kernels`` (installed from ``kernels/``): Triton kernels, no DaWin semantics.
* ``measured``: the measured dispatch's timing and on-disk cache (imports none of the
  above; besides ``app``, the one module that writes files).
* ``ops``, ``reference``: the public op ``interp_linear`` and its float64 reference.
* ``algorithm/``: expertise, coefficients, mixtures, grouping (imports nothing above).
* ``nn/``: interpolating layers, routing, whole models.
* ``distributed``: data parallelism over ``torch.distributed`` (imports none of the above).
* ``pipeline``: the DaWin method on those models; ``pipeline_lm``: on causal LMs.
* ``integrations/``, ``bench/``: front-end plug-ins, benchmark harnesses.
* ``app/``: the command line, demo and evaluation; the only floor that does I/O (with
  ``measured``'s cache and the kernels' compile gate).
"""

# First: in the dawin-fast command only, Ctrl-C during the imports below is one line.
from . import _launch  # noqa: F401
from .algorithm.coefficients import (
    TEMPERATURES,
    coefficients_from_entropies,
    coefficients_multi,
    coefficients_two,
    dynamic_classifier_selection,
    dynamic_output_ensemble,
    offset_terms,
)
from .algorithm.expertise import cross_entropy, entropy, max_logit, max_softmax
from .algorithm.grouping import (
    Grouping,
    group_by_labels,
    group_by_rows,
    group_per_sample,
    single_group,
    two_model_rows,
)
from .algorithm.mixture import BetaMixture, DirichletMixture
from .nn import (
    DaWinCausalLM,
    DaWinClassifier,
    DaWinLinear,
    DaWinModel,
    DaWinViT,
    GroupedModel,
    Routing,
    dawinize,
    route,
)
from .ops import (
    clear_dispatch_cache,
    clear_verdicts,
    interp_linear,
    interp_linear_torch,
    kernel_choice,
    set_measured_dispatch,
    set_verification,
    skip_value_checks,
    use_backend,
    use_strategy,
)
from .pipeline import MULTITASK_PROTOCOLS, DaWin, DaWinMultiTask, DaWinOutput, task_vectors
from .pipeline_lm import DaWinLM, DaWinLMOutput

__all__ = [
    "MULTITASK_PROTOCOLS",
    "TEMPERATURES",
    "BetaMixture",
    "DaWin",
    "DaWinCausalLM",
    "DaWinClassifier",
    "DaWinLM",
    "DaWinLMOutput",
    "DaWinLinear",
    "DaWinModel",
    "DaWinMultiTask",
    "DaWinOutput",
    "DaWinViT",
    "DirichletMixture",
    "GroupedModel",
    "Grouping",
    "Routing",
    "coefficients_from_entropies",
    "coefficients_multi",
    "coefficients_two",
    "clear_dispatch_cache",
    "clear_verdicts",
    "cross_entropy",
    "dawinize",
    "dynamic_classifier_selection",
    "dynamic_output_ensemble",
    "entropy",
    "group_by_labels",
    "group_by_rows",
    "group_per_sample",
    "interp_linear",
    "interp_linear_torch",
    "kernel_choice",
    "max_logit",
    "max_softmax",
    "offset_terms",
    "route",
    "set_measured_dispatch",
    "set_verification",
    "single_group",
    "skip_value_checks",
    "task_vectors",
    "two_model_rows",
    "use_backend",
    "use_strategy",
]
__version__ = "0.1.0"
