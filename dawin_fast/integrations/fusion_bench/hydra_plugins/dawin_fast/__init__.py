"""Hydra search-path plugin: makes dawin_fast's FusionBench configs visible to the
``fusion_bench`` CLI (``method=dawin_fast/clip_we_moe``, ``modelpool=dawin_fast/...``).

Installed as ``hydra_plugins.dawin_fast`` (see setup.py): Hydra imports every module of
the ``hydra_plugins`` namespace package and registers the ``SearchPathPlugin`` subclasses
it finds.
"""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class DaWinFastSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append("dawin_fast", "pkg://dawin_fast.integrations.fusion_bench.config")
