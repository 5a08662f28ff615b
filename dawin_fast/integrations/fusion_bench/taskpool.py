"""FusionBench's CLIP classification task pool, telling ``clip_dawin`` the evaluated task.

FusionBench's ``CLIPVisionModelTaskPool`` evaluates one task at a time: it calls
``on_task_evaluation_begin(classifier, task_name)``, sets the classifier's zero-shot head
(``set_classification_task``), then classifies the task's test set. The returned model is
not told the task, so a ``clip_dawin`` model would score each task model through its own
head. ``DaWinCLIPVisionModelTaskPool`` extends that hook. For a ``clip_dawin`` model, it
builds the task's zero-shot head as the classifier will, and gives it to the model
(``DaWinCLIPVisionModel.begin_task``). Every task model is then scored through the
evaluated task's head, and in mixture mode the mixture is fitted per task on its test set
(the paper's protocol). Other models are evaluated exactly as FusionBench's task pool
evaluates them.
"""

from __future__ import annotations

import itertools

from .compat import alias_clip_vision_transformer

alias_clip_vision_transformer()  # before FusionBench's task pool module is imported

from fusion_bench.taskpool import CLIPVisionModelTaskPool  # noqa: E402
from fusion_bench.tasks.clip_classification import get_classnames_and_templates  # noqa: E402

from .dawin_model import DaWinCLIPVisionModel, ZeroShotHead  # noqa: E402


class DaWinCLIPVisionModelTaskPool(CLIPVisionModelTaskPool):
    """``CLIPVisionModelTaskPool`` giving a ``clip_dawin`` model the evaluated task's
    zero-shot head (and, in mixture mode, its test set to fit the mixture on)."""

    _dawin_model: DaWinCLIPVisionModel | None = None

    def on_task_evaluation_begin(self, classifier, task_name: str) -> None:
        super().on_task_evaluation_begin(classifier, task_name)
        model = classifier.clip_model.vision_model
        if not isinstance(model, DaWinCLIPVisionModel):
            return
        # The head FusionBench sets right after this hook (it runs the text model twice
        # per task): the model needs it now, before it fits the mixture on the test set.
        classnames, templates = get_classnames_and_templates(task_name)
        classifier.set_classification_task(classnames, templates)
        clip = classifier.clip_model
        head = ZeroShotHead(clip.visual_projection,
                            clip.logit_scale.exp() * classifier.zeroshot_weights)
        loader = self.test_dataloaders[task_name]
        # Fitted on the batches evaluated: the one batch of fast_dev_run, else the test set.
        calibration = itertools.islice(loader, 1) if self.fast_dev_run else loader
        model.begin_task(task_name, head, calibration)
        self._dawin_model = model

    def on_task_evaluation_end(self) -> None:
        super().on_task_evaluation_end()
        if self._dawin_model is not None:
            self._dawin_model.end_task()
            self._dawin_model = None


__all__ = ["DaWinCLIPVisionModelTaskPool"]
