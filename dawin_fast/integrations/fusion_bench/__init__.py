"""dawin_fast as FusionBench's backend (optional: ``pip install -e ".[fusionbench]"``).

* ``models``: ``FusedWeightEnsemblingMoE`` (WEMoE, dense/sparse/shared-gate, built from
  FusionBench's own module), ``fuse_we_moe`` (swap them into a whole model),
  ``FusedDAWEModel`` (DAWE task-wise), and the workarounds for FusionBench 0.2.33
  (``task_arithmetic``, ``vision_transformer``, ``set_batch_reduce``).
* ``algorithms``: ``BaseAlgorithm`` subclasses for the ``fusion_bench`` CLI
  (``method=dawin_fast/clip_we_moe``, ``clip_dawe``, ``clip_dawin``).
* ``tiny``: a tiny random CLIP vision model pool for offline smoke runs.

The configs live in ``config/`` and reach Hydra through ``hydra_plugins.dawin_fast``.
Importing this package does not import FusionBench; its modules do.
"""

CONFIG_PACKAGE = "dawin_fast.integrations.fusion_bench.config"
