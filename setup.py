"""dawin_fast: fused weight-interpolation kernels for DaWin.

`kernels/` is installed as `dawin_fast.kernels` (never as a top-level `kernels`,
a name another PyPI package owns).
"""

from setuptools import setup

setup(
    name="dawin_fast",
    version="0.1.0",
    description="Triton kernels and modules for fast DaWin (dynamic weight interpolation)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=[
        "dawin_fast", "dawin_fast.algorithm", "dawin_fast.nn", "dawin_fast.integrations",
        "dawin_fast.integrations.fusion_bench", "dawin_fast.bench", "dawin_fast.app",
        "dawin_fast.kernels", "dawin_fast.kernel_tools",
        # The Hydra search-path plugin of the FusionBench plug-in, installed as the top-level
        # namespace package "hydra_plugins" (where Hydra looks: pkgutil.walk_packages over
        # its __path__) from a folder inside the plug-in. Listed on its own so that an
        # editable install maps the namespace to that folder.
        "hydra_plugins", "hydra_plugins.dawin_fast",
    ],
    # The FusionBench configs (method/, modelpool/ and taskpool/dawin_fast/*.yaml).
    package_data={"dawin_fast.integrations.fusion_bench": ["config/*/*/*.yaml"]},
    package_dir={"dawin_fast": "dawin_fast", "dawin_fast.kernels": "kernels",
                 "hydra_plugins": "dawin_fast/integrations/fusion_bench/hydra_plugins"},
    install_requires=[
        "torch>=2.4",
        "triton>=3.0",
        "numpy",
        "scipy",
        "open_clip_torch",
        "tqdm",
    ],
    extras_require={
        # kernels: Hugging Face's package, which transformers >= 5 requires; named so that the
        # test of the tree's kernels/ folder never hiding it always has it to find.
        "test": ["pytest", "pytest-benchmark", "hypothesis", "ruff", "timm", "transformers",
                 "kernels"],
        "demo": ["scikit-learn", "matplotlib", "safetensors"],
        # The FusionBench plug-in (dawin_fast.integrations.fusion_bench and its Hydra plugin).
        "fusionbench": ["fusion-bench==0.2.33"],
        # The documentation site (mkdocs.yml, docs/): `mkdocs build --strict` in .ci/run.
        "docs": ["mkdocs==1.6.1", "mkdocs-material==9.8.2", "mkdocstrings==1.0.8",
                 "mkdocstrings-python==2.0.11"],
    },
    entry_points={"console_scripts": ["dawin-fast=dawin_fast.app.cli:main"]},
)
