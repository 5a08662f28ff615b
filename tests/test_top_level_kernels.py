"""The repository's kernels/ folder never stands in for the top-level ``kernels``.

transformers >= 5 requires Hugging Face's ``kernels`` distribution. Any Python started in the
repository root (``python -m pytest``, ``python -c``, setuptools' ``egg_info`` in a
``--no-build-isolation`` install) has the root first on ``sys.path``, where kernels/ (our
``dawin_fast.kernels``) would be found first under that name.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ROOT / "kernels" / "__init__.py"


def _installed_kernels_distribution() -> importlib.metadata.Distribution:
    try:
        return importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("the test extra installs Hugging Face's kernels (setup.py); it is missing")


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_import_kernels_in_this_process_is_hugging_faces_package():
    # pytest put the repository root on sys.path (tests/ is a package).
    assert str(ROOT) in [os.path.abspath(p or os.curdir) for p in sys.path]
    import kernels

    installed = Path(_installed_kernels_distribution().locate_file("kernels"))
    assert Path(kernels.__file__).resolve().parent == installed.resolve()
    assert Path(kernels.__file__).resolve() != OURS


def test_transformers_imports_from_the_repository_root():
    _installed_kernels_distribution()
    done = _python(
        "import kernels, transformers.integrations.hub_kernels\n"
        "from transformers import LlamaForCausalLM\n"
        "import dawin_fast.kernels\n"
        "print(kernels.__file__); print(dawin_fast.kernels.__file__)", ROOT)
    assert done.returncode == 0, done.stderr
    hub, ours = done.stdout.split()
    assert Path(hub).resolve() != OURS
    assert Path(ours).resolve() == OURS


def test_without_another_kernels_the_name_is_not_found():
    # With site-packages hidden, only the tree's folder could answer to "kernels".
    done = _python(
        "import sys\n"
        "sys.path = [p for p in sys.path if 'site-packages' not in p]\n"
        "try:\n"
        "    import kernels\n"
        "except ModuleNotFoundError as e:\n"
        "    assert e.name == 'kernels' and 'kernels' not in sys.modules, e\n"
        "    print('refused')\n", ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "refused"


def test_no_build_isolation_install_reads_its_metadata(tmp_path):
    # setuptools loads every distribution's egg_info.writers entry point, Hugging Face's
    # kernels._internals.locking among them, while the project folder is on sys.path.
    _installed_kernels_distribution()
    for name in ("setup.py", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    for folder in ("kernels", "dawin_fast"):
        shutil.copytree(ROOT / folder, tmp_path / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
         "--no-build-isolation", "--dry-run", "-e", "."],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
