"""dawin_fast: fused weight-interpolation kernels and modules for DaWin.

Layers: ``interp_linear`` (the fused op), ``DaWinLinear`` and the other modules in
``dawin_fast.nn``. Models: ``DaWinViT`` (open_clip), ``dawinize`` (any architecture),
``DaWinClassifier``. The method: ``DaWin`` / ``DaWinMultiTask``, built on the expertise,
coefficient, mixture and grouping functions, which are usable on their own.
"""

from .coefficients import (
    TEMPERATURES,
    coefficients_from_entropies,
    coefficients_multi,
    coefficients_two,
    dynamic_classifier_selection,
    dynamic_output_ensemble,
    offset_terms,
)
from .expertise import cross_entropy, entropy, max_logit, max_softmax
from .grouping import Grouping, group_by_labels, group_by_rows, single_group, two_model_rows
from .mixture import BetaMixture, DirichletMixture
from .nn import DaWinClassifier, DaWinLinear, DaWinModel, GroupedModel, Routing, dawinize, route
from .ops import interp_linear, interp_linear_torch, skip_value_checks, use_backend
from .pipeline import DaWin, DaWinMultiTask, DaWinOutput, task_vectors
from .vit import DaWinViT

__all__ = [
    "TEMPERATURES",
    "BetaMixture",
    "DaWin",
    "DaWinClassifier",
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
    "cross_entropy",
    "dawinize",
    "dynamic_classifier_selection",
    "dynamic_output_ensemble",
    "entropy",
    "group_by_labels",
    "group_by_rows",
    "interp_linear",
    "interp_linear_torch",
    "max_logit",
    "max_softmax",
    "offset_terms",
    "route",
    "single_group",
    "skip_value_checks",
    "task_vectors",
    "two_model_rows",
    "use_backend",
]
__version__ = "0.1.0"
