"""dawin_fast as FusionBench's backend (optional: ``pip install -e ".[fusionbench]"``).

* ``models``: ``FusedWeightEnsemblingMoE`` (WEMoE, dense/sparse/shared-gate, built from
  FusionBench's own module), ``fuse_we_moe`` (swap them into a whole model),
  ``FusedDAWEModel`` (DAWE task-wise), and the workarounds for FusionBench 0.2.33
  (``task_arithmetic``, ``vision_transformer``, ``set_batch_reduce``).
* ``algorithms``: ``BaseAlgorithm`` subclasses for the ``fusion_bench`` CLI
  (``method=dawin_fast/clip_we_moe``, ``clip_dawe``, ``clip_dawin``).
* ``dawin_model``: ``DaWinCLIPVisionModel``, the model ``clip_dawin`` returns, and
  ``ZeroShotHead``.
* ``taskpool``: ``DaWinCLIPVisionModelTaskPool``, FusionBench's CLIP classification task
  pool telling a ``clip_dawin`` model the evaluated task (the paper's protocol).
* ``compat``: the alias that lets FusionBench's CLIP task pools import under transformers 5.
* ``tiny``: a tiny random CLIP vision model pool and classification task pool for offline
  runs.

The configs live in ``config/`` and reach Hydra through ``hydra_plugins.dawin_fast``.
Importing this package does not import FusionBench; its modules do.
"""

CONFIG_PACKAGE = "dawin_fast.integrations.fusion_bench.config"
