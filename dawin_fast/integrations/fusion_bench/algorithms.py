"""FusionBench algorithms (``BaseAlgorithm`` subclasses) on dawin_fast's fused backend.

Selected from the ``fusion_bench`` CLI as ``method=dawin_fast/<name>`` (configs shipped in
``config/method/dawin_fast/``, found through the Hydra search-path plugin
``hydra_plugins.dawin_fast``):

* ``clip_we_moe``: WEMoE for Hugging Face CLIP vision models (sparse task vectors with
  ``tv_prune_ratio > 0``), fused MoE layers, test-time adaptation of the gates.
* ``clip_dawe``: DAWE task-wise, the whole model merged per sample, fused.
* ``clip_dawin``: multi-task DaWin (entropy-based per-sample task arithmetic), which
  FusionBench does not have. With ``DaWinCLIPVisionModelTaskPool`` (``taskpool.py``) every
  task model is scored through the evaluated task's zero-shot head (the paper's protocol);
  with FusionBench's own task pools, through its own task's head (see ``dawin_model``).

Test-time adaptation minimises the prediction entropy on shuffled test batches of every
task with Adam, as FusionBench's WEMoE loop does; it needs the model pool's test datasets,
processor and CLIP text model (zero-shot heads). ``max_steps: 0`` skips it.

Every algorithm loads the pool through ``pool.load_pool``: task models whose architecture
differs from the pretrained model's are refused before any work, and an in-memory pool's
modules are copied (running twice on one pool gives the same model).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from fusion_bench.method import BaseAlgorithm
from fusion_bench.mixins import CLIPClassificationMixin, SimpleProfilerMixin
from fusion_bench.utils import instantiate
from torch import nn

from ...nn.classifier import DaWinClassifier
from ...nn.convert import dawinize
from ...pipeline import DaWin, DaWinMultiTask, task_vectors
from .dawin_model import DaWinCLIPVisionModel, PooledVision, ZeroShotHead
from .models import (
    FusedDAWEModel,
    FusedWeightEnsemblingMoE,
    set_batch_reduce,
    task_arithmetic,
    vision_transformer,
)
from .pool import load_pool, zero_shot_error, zero_shot_needs

log = logging.getLogger(__name__)


def entropy_loss(logits: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean prediction entropy, as FusionBench's WEMoE/AdaMerging loss."""
    probs = torch.softmax(logits, dim=-1)
    return -torch.sum(probs * torch.log(probs + eps), dim=-1).mean()


class _ZeroShotHeads(CLIPClassificationMixin):
    """FusionBench's zero-shot heads, with a clear error when the pool cannot give them."""

    method = "dawin_fast"

    def zero_shot_heads(self, why: str, remedy: str, task_names=None) -> None:
        """Set up the zero-shot heads (once), or raise saying what is missing."""
        if self.whether_setup_zero_shot_classification_head:
            return
        zero_shot_needs(self.modelpool, self.method, why, remedy)
        try:
            self.setup_zero_shot_classification_head(task_names=task_names)
        except (TypeError, AssertionError, OSError, ValueError) as err:
            raise zero_shot_error(self.method, why, remedy, err) from err


class _TestTimeAdaptation(_ZeroShotHeads, SimpleProfilerMixin, BaseAlgorithm):
    """Entropy-minimising test-time adaptation shared by the algorithms here."""

    TTA_WHY = "test-time adaptation (max_steps > 0)"
    TTA_REMEDY = "set method.max_steps=0 to skip it"

    def __init__(self, lr: float = 1e-4, max_steps: int = 0, batch_size: int = 16,
                 num_workers: int = 0, use_grad_accumulate: bool = True, **kwargs) -> None:
        self.lr = lr
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.use_grad_accumulate = use_grad_accumulate
        super().__init__(**kwargs)

    def logits(self, module: nn.Module, images: torch.Tensor, task: str) -> torch.Tensor:
        return self.compute_logits(module, images, task)

    def test_time_adaptation(self, module: nn.Module, parameters: list[nn.Parameter]
                             ) -> nn.Module:
        """``max_steps`` Adam steps on the entropy of every task's test batches."""
        if self.max_steps <= 0:
            return module
        self.zero_shot_heads(self.TTA_WHY, self.TTA_REMEDY)
        optimizer = torch.optim.Adam(parameters, lr=self.lr)
        module, optimizer = self.fabric.setup(module, optimizer)
        module.train()
        for _ in range(self.max_steps):
            total = 0
            for task in self.modelpool.model_names:
                with self.profile("data time"):
                    images, _ = next(self.get_shuffled_test_loader_iter(
                        task, batch_size=self.batch_size, num_workers=self.num_workers))
                with self.profile("forward pass"):
                    loss = entropy_loss(self.logits(module, images, task))
                if self.use_grad_accumulate:  # backward per task: less memory
                    with self.profile("backward pass"):
                        self.fabric.backward(loss)
                else:
                    total = total + loss
            if not self.use_grad_accumulate:
                with self.profile("backward pass"):
                    self.fabric.backward(total)
            optimizer.step()
            optimizer.zero_grad()
        module = getattr(module, "module", module)  # unwrap Fabric's wrapper
        return module.eval()


class FusedCLIPWeightEnsemblingMoE(_TestTimeAdaptation):
    """WEMoE (Tang et al., ICML 2024) for CLIP vision models with fused MoE layers.

    The pretrained model plus ``init_lambda`` times the sum of the task vectors, with every
    MLP replaced by a weight-ensembling MoE (FusionBench's module, its gate and
    initialisation, converted by ``FusedWeightEnsemblingMoE``). Evaluated per sample
    (``eval_batch_reduce: false``) on every layer.
    """

    def __init__(self, init_lambda: float = 0.3, router_hidden_layers: int = 2,
                 batch_reduce: bool = True, eval_batch_reduce: bool = False,
                 tv_prune_ratio: float = 0.0, **kwargs) -> None:
        self.init_lambda = init_lambda
        self.router_hidden_layers = router_hidden_layers
        self.batch_reduce = batch_reduce
        self.eval_batch_reduce = eval_batch_reduce
        self.tv_prune_ratio = tv_prune_ratio
        super().__init__(**kwargs)

    method = "clip_we_moe"

    def construct_moe_model(self, modelpool) -> nn.Module:
        from fusion_bench.models.sparse_we_moe import SparseWeightEnsemblingMoE
        from fusion_bench.models.we_moe import WeightEnsemblingMoE

        # FusionBench's WEMoE below turns the expert modules into task vectors in place:
        # load_pool copies an in-memory pool's modules so that the pool stays intact.
        base, experts = load_pool(modelpool, self.method)
        moe_model = task_arithmetic(copy.deepcopy(base), experts, self.init_lambda)
        moe_model.requires_grad_(False)
        base_encoder = vision_transformer(base).encoder
        expert_encoders = [vision_transformer(e).encoder for e in experts]
        hidden_size = base.config.hidden_size
        for index, layer in enumerate(vision_transformer(moe_model).encoder.layers):
            kwargs = dict(hidden_size=hidden_size, base_model=base_encoder.layers[index].mlp,
                          expert_models=[e.layers[index].mlp for e in expert_encoders],
                          init_lambda=self.init_lambda, batch_first=True,
                          router_hidden_layers=self.router_hidden_layers,
                          batch_reduce=self.batch_reduce)
            if self.tv_prune_ratio > 0:
                moe = SparseWeightEnsemblingMoE(**kwargs, num_layers=len(base_encoder.layers),
                                                layer_idx=index,
                                                tv_prune_ratio=self.tv_prune_ratio)
            else:
                moe = WeightEnsemblingMoE(**kwargs)
            layer.mlp = FusedWeightEnsemblingMoE.from_fusion_bench(moe)
        return moe_model

    def run(self, modelpool) -> nn.Module:
        self.modelpool = modelpool
        if self.max_steps > 0:  # fail before building anything
            self.zero_shot_heads(self.TTA_WHY, self.TTA_REMEDY)
        model = self.construct_moe_model(modelpool)
        gates = [p for p in model.parameters() if p.requires_grad]
        model = self.test_time_adaptation(model, gates)
        set_batch_reduce(model, self.eval_batch_reduce)
        return model


class FusedCLIPDataAdaptiveWeightEnsembling(_TestTimeAdaptation):
    """DAWE task-wise for CLIP vision models: per-sample whole-model merges, fused.

    ``feature_extractor``: a config instantiating a frozen module from images to
    features [B, hidden_size] (FusionBench's default is a ResNet-18 from the hub); None
    uses the pretrained CLIP vision model's pooled output (no download).
    """

    def __init__(self, init_lambda: float = 0.3, gate_hidden_layers: int = 1,
                 batch_reduce: bool = True, eval_batch_reduce: bool = False,
                 feature_extractor: Any = None, hidden_size: int | None = None,
                 **kwargs) -> None:
        self.init_lambda = init_lambda
        self.gate_hidden_layers = gate_hidden_layers
        self.batch_reduce = batch_reduce
        self.eval_batch_reduce = eval_batch_reduce
        self.feature_extractor = feature_extractor
        self.hidden_size = hidden_size
        super().__init__(**kwargs)

    method = "clip_dawe"

    def run(self, modelpool) -> nn.Module:
        self.modelpool = modelpool
        if self.max_steps > 0:  # fail before building anything
            self.zero_shot_heads(self.TTA_WHY, self.TTA_REMEDY)
        base, experts = load_pool(modelpool, self.method)
        if self.feature_extractor is None:
            extractor, hidden = copy.deepcopy(base), base.config.hidden_size
        else:
            extractor, hidden = instantiate(self.feature_extractor), self.hidden_size
            if hidden is None:
                raise ValueError("clip_dawe: set hidden_size, the feature extractor's width")
        model = FusedDAWEModel.build(base, experts, extractor, hidden, self.init_lambda,
                                     self.gate_hidden_layers, self.batch_reduce)
        model = self.test_time_adaptation(model, list(model.gate.parameters()))
        model.batch_reduce = self.eval_batch_reduce
        return model


class DaWinForCLIP(_ZeroShotHeads, BaseAlgorithm):
    """Multi-task DaWin (Oh et al., 2025) for CLIP vision models, fused.

    Evaluated by ``DaWinCLIPVisionModelTaskPool``, every task model is scored through the
    evaluated task's zero-shot head, the one the task pool classifies with (the paper's
    protocol). Evaluated by another task pool, which does not say the task, task model t
    is scored through ``heads``' head of task t (protocol ``"own_head"``, logged).

    ``heads``: None builds FusionBench's zero-shot heads (CLIP text model and processor
    of the pool; features go through ``visual_projection``, scaled by the logit scale), or
    a config instantiating ``{task: [C, D] tensor}`` applied to the L2-normalised pooled
    output. ``mode``: ``per_sample`` (exact DaWin) or ``mixture`` (a Dirichlet mixture with
    ``n_clusters`` components, fitted per task on its test set by
    ``DaWinCLIPVisionModelTaskPool``, else on each batch). ``scale``: s (default 0.3·T).

    A pool of one task model is the two-model DaWin (robust fine-tuning): λ per sample
    between the pretrained and the fine-tuned model, both scored through the task's head,
    a Beta mixture on λ in mixture mode; ``temperatures`` are then [T_pretrained,
    T_fine-tuned], and ``scale`` does not apply.
    """

    method = "clip_dawin"
    HEADS_WHY = "clip_dawin without method.heads"
    HEADS_REMEDY = ("give method.heads, a _target_ config returning {task: [C, D] tensor} "
                    "(from the command line with Hydra's '+': "
                    "+method.heads._target_=my_module.my_heads)")

    def __init__(self, mode: str = "per_sample", n_clusters: int = 3,
                 scale: float | None = None, temperatures: list[float] | None = None,
                 expertise: str = "entropy", heads: Any = None, seed: int = 0,
                 **kwargs) -> None:
        self.mode = mode
        self.n_clusters = n_clusters
        self.scale = scale
        self.temperatures = temperatures
        self.expertise = expertise
        self.heads = heads
        self.seed = seed
        super().__init__(**kwargs)

    def _heads(self) -> tuple[list[torch.Tensor], nn.Module | None]:
        names = self.modelpool.model_names
        if self.heads is not None:
            heads = instantiate(self.heads)
            missing = [t for t in names if t not in heads]
            if missing:
                raise ValueError(f"clip_dawin: heads has no head for tasks {missing}")
            return [torch.as_tensor(heads[t]).float() for t in names], None
        self.zero_shot_heads(self.HEADS_WHY, self.HEADS_REMEDY, task_names=names)
        scale = self.logit_scale_exp.cpu()
        heads = [scale * self.zeroshot_weights[t].cpu().float() for t in names]
        return heads, copy.deepcopy(self.visual_projection).cpu()

    def run(self, modelpool) -> nn.Module:
        self.modelpool = modelpool
        if len(modelpool.model_names) == 1 and self.scale is not None:
            raise ValueError("clip_dawin: scale does not apply to a pool of one task model "
                             "(the two-model DaWin interpolates the pretrained and the "
                             "fine-tuned model); leave method.scale=null")
        heads, projection = self._heads()  # first: a pool without them fails before work
        base, experts = load_pool(modelpool, self.method)
        self._check_heads(heads, projection, base)
        names = list(modelpool.model_names)
        if len(experts) == 1:
            return DaWinCLIPVisionModel(self._two_model(base, experts[0], heads[0],
                                                        projection), names).eval()
        stack = task_vectors(base, experts)
        encoder = dawinize([PooledVision(m) for m in stack])
        zero_shot = [ZeroShotHead(projection, head) for head in heads]
        dawin = DaWinMultiTask(encoder, zero_shot, temperatures=self.temperatures,
                               mode=self.mode, n_clusters=self.n_clusters, scale=self.scale,
                               expertise=self.expertise, seed=self.seed)
        log.info("clip_dawin: %d task models, scored through the evaluated task's head "
                 "under DaWinCLIPVisionModelTaskPool (the paper's protocol), through their "
                 "own heads under other task pools", len(experts))
        return DaWinCLIPVisionModel(dawin, names).eval()

    def _check_heads(self, heads: list[torch.Tensor], projection: nn.Module | None,
                     base: nn.Module) -> None:
        """Each head [C, D] with D the width of the features it is applied to."""
        width = projection.out_features if projection is not None else \
            getattr(getattr(base, "config", None), "hidden_size", None)
        for task, head in zip(self.modelpool.model_names, heads, strict=True):
            if head.dim() != 2 or (width is not None and head.shape[1] != width):
                raise ValueError(f"clip_dawin: the head of task '{task}' is "
                                 f"{list(head.shape)}; expected [C, {width}] (classes by the "
                                 f"width of the pooled features it is applied to)")

    def _two_model(self, base: nn.Module, finetuned: nn.Module, head: torch.Tensor,
                   projection: nn.Module | None) -> DaWin:
        """Two-model DaWin over [θ_pre, θ_1] (the same head for both: the task's)."""
        encoder = dawinize([PooledVision(m, projection) for m in (base, finetuned)])
        return DaWin(DaWinClassifier(encoder, [head, head]), temperatures=self.temperatures,
                     mode=self.mode, n_clusters=self.n_clusters, expertise=self.expertise,
                     seed=self.seed)


__all__ = ["DaWinForCLIP", "FusedCLIPDataAdaptiveWeightEnsembling",
           "FusedCLIPWeightEnsemblingMoE", "entropy_loss"]
