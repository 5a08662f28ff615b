"""Test setup: without a GPU, Triton kernels run through the interpreter.

TRITON_INTERPRET must be set before the kernels are decorated (first import of
dawin_fast), so it is set here, before any test module imports the package.
"""

import os
import tempfile

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# The measured dispatch (dawin_fast.measured) would time strategies and write a cache in
# the home directory: tests keep the model's choices (deterministic) unless they turn it
# on themselves (tests/test_measured_dispatch.py, with an injected timer and a tmp cache).
os.environ.setdefault("DAWIN_FAST_MEASURE", "0")

from hypothesis import settings  # noqa: E402

settings.register_profile("default", deadline=None, print_blob=True)
# The GPU session (`--hypothesis-profile gpu`, benchmarks/gpu_session.py): on a GPU every
# new random shape is a new autotune key, so each example compiles and benchmarks every
# kernel config (seconds apiece); fewer examples there, the full 100 on the interpreter.
settings.register_profile("gpu", max_examples=20, deadline=None, print_blob=True)
settings.load_profile("default")

import pytest  # noqa: E402


def _devices():
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    return devices


DEVICES = _devices()


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture
def torch_backend():
    """The PyTorch path for a module's logic (the CLI, the pipeline, the API edges): the
    kernels have their own tests, and the interpreter would make these runs minutes long.
    A module takes it for every test with ``pytestmark = pytest.mark.usefixtures(...)``."""
    from dawin_fast import use_backend

    with use_backend("torch"):
        yield


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a command gets as far as building models, loading or training on
    data, or running a benchmark: its arguments and files must be checked first."""
    def forbidden(*args, **kwargs):
        raise AssertionError("expensive work started before validation finished")

    monkeypatch.setattr("dawin_fast.app.eval_command.build_classifier", forbidden)
    monkeypatch.setattr("dawin_fast.app.demo.build_models", forbidden)
    monkeypatch.setattr("dawin_fast.app.demo.load_digits_data", forbidden)
    monkeypatch.setattr("dawin_fast.bench.layers.run", forbidden)
    monkeypatch.setattr("dawin_fast.bench.e2e.run", forbidden)


# Module-scoped fixtures run before the per-test cache below: never the user's cache.
os.environ["DAWIN_FAST_CACHE"] = tempfile.mkdtemp(prefix="dawin-fast-test-cache-")


@pytest.fixture(autouse=True)
def _eval_cache(tmp_path_factory, monkeypatch):
    """Each test its own ``dawin-fast eval`` cache (``DAWIN_FAST_CACHE``), never the user's."""
    monkeypatch.setenv("DAWIN_FAST_CACHE", str(tmp_path_factory.mktemp("cache")))
