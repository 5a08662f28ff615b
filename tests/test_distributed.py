"""dawin_fast.distributed: shards, the one-process identity, and DaWin under gloo.

The multi-process tests start 2 and 3 ranks of ``tests/dist_worker.py`` (a gloo group on
the CPU) and compare every result with the same scenarios run in this process without a
group: equal bits (``torch.equal``), not closeness. Each launch has a time limit and no
process outlives it (``tests/launch.py``).
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from dawin_fast import distributed, use_backend
from dawin_fast.algorithm.coefficients import offset_terms
from dawin_fast.algorithm.mixture import BetaMixture, DirichletMixture
from dawin_fast.distributed import RankFailure, RankValueError, one_line, shard_range
from tests import dist_worker
from tests.launch import base_env, launch, python

LAUNCH_TIMEOUT = 180  # seconds; a launch takes ~15-25 s on 2 shared cores


# --- shards ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2, 5, 13, 64, 100])
@pytest.mark.parametrize("batch_size", [1, 3, 8])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
def test_shards_are_whole_global_batches_in_rank_order(n, batch_size, world):
    shards = [shard_range(n, batch_size, r, world) for r in range(world)]
    # disjoint, every sample once, rank order = dataset order (no padding, no repeats)
    assert [i for s in shards for i in s] == list(range(n))
    # each shard starts on a global batch boundary, so its batches are the global ones
    global_batches = [list(range(b, min(b + batch_size, n))) for b in range(0, n, batch_size)]
    local_batches = [list(s[i:i + batch_size]) for s in shards
                     for i in range(0, len(s), batch_size)]
    assert local_batches == global_batches
    counts = [-(-len(s) // batch_size) for s in shards]
    assert max(counts) - min(counts) <= 1  # balanced to one batch
    if len(global_batches) < world:  # fewer batches (or samples) than ranks: empty shards
        assert sum(len(s) == 0 for s in shards) == world - len(global_batches)


def test_shard_loader_yields_the_one_process_batches():
    data = dist_worker.dataset(13)
    whole = list(torch.utils.data.DataLoader(data, batch_size=3))
    for world in (2, 3, 5):
        parts = []
        for r in range(world):
            subset = torch.utils.data.Subset(data, shard_range(13, 3, r, world))
            parts += list(torch.utils.data.DataLoader(subset, batch_size=3))
        assert len(parts) == len(whole)
        for (x, y), (x1, y1) in zip(parts, whole, strict=True):
            assert torch.equal(x, x1) and torch.equal(y, y1)


def test_shard_range_rejects_bad_arguments():
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        shard_range(10, 0, 0, 2)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\)"):
        shard_range(10, 2, 2, 2)
    with pytest.raises(ValueError, match="num_samples"):
        shard_range(-1, 2, 0, 1)


# --- one process: every function is the identity ------------------------------------------


def test_without_a_group_everything_is_one_process():
    assert not distributed.active() and distributed.rank() == 0
    assert distributed.world_size() == 1
    t = torch.arange(6.0).reshape(3, 2)
    assert distributed.gather_rows(t) is t and distributed.gather_rows(t, dst=0) is t
    assert distributed.gather_objects({"a": 1}) == [{"a": 1}]
    assert distributed.run_on_main(lambda a, b: a + b, 2, b=3) == 5
    distributed.check_distinct_shards(t, "x")
    assert list(distributed.shard(dist_worker.dataset(5), 2).indices) == list(range(5))
    with pytest.raises(KeyError, match="unchanged"):  # exceptions pass through as they are
        with distributed.shared_errors():
            raise KeyError("unchanged")
    with pytest.raises(ZeroDivisionError):
        distributed.run_on_main(lambda: 1 / 0)


def test_one_line_messages():
    assert one_line(ValueError("bad --clusters\nmore")) == "bad --clusters"
    assert one_line(OSError("cannot identify image file x.png")) == \
        "OSError: cannot identify image file x.png"
    assert one_line(RuntimeError("")) == "RuntimeError"
    worker = ("Caught UnidentifiedImageError in DataLoader worker process 0.\n"
              "Original Traceback (most recent call last):\n  File ...\n"
              "PIL.UnidentifiedImageError: cannot identify image file 'a/b.png'\n")
    assert one_line(RuntimeError(worker)) == \
        "PIL.UnidentifiedImageError: cannot identify image file 'a/b.png'"


def test_rank_failures_keep_the_value_error_kind():
    user = RankFailure.of(1, "dataset x: empty", True)
    assert isinstance(user, RankValueError) and isinstance(user, ValueError)
    assert str(user) == "rank 1: dataset x: empty"
    bug = RankFailure.of(2, "KeyError: 'w'", False)
    assert not isinstance(bug, ValueError) and bug.rank == 2
    copy = pickle.loads(pickle.dumps(user))
    assert type(copy) is RankValueError and str(copy) == str(user)


# --- the fit gives the same bits whatever the thread count --------------------------------


def test_calibration_fit_is_thread_count_invariant():
    """torchrun gives each of several ranks one thread; one process uses every core. The
    fit on rank 0 must not depend on it (torch's CPU mean and OpenBLAS's dot products
    split long sums across threads; NumPy's pairwise sums and einsum do not)."""
    rng = np.random.default_rng(0)
    n = 300_000  # long enough for torch (32k grain) and OpenBLAS to use two threads
    h = torch.from_numpy(rng.random((2, n)).astype(np.float32) * 3)
    lam = np.concatenate([rng.beta(2, 8, n // 2), rng.beta(8, 2, n - n // 2)])
    p = rng.dirichlet([2.0, 3.0, 4.0], n)
    results = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with threadpool_limits(threads):
                beta = BetaMixture(2, n_init=1, max_iter=3, seed=0).fit(lam)
                dirichlet = DirichletMixture(2, n_init=1, max_iter=2, seed=0).fit(p)
                results.append((offset_terms(h[0], h[1]), beta.alphas_, beta.betas_,
                                dirichlet.alphas_, dirichlet.weights_))
    finally:
        torch.set_num_threads(previous)
    one, two = results
    assert one[0] == two[0]
    for a, b in zip(one[1:], two[1:], strict=True):
        assert np.array_equal(a, b)


# --- DaWin on 2 and 3 ranks, against one process -------------------------------------------


def assert_identical(got, expected, where=""):
    if isinstance(expected, dict):
        assert got.keys() == expected.keys(), where
        for key in expected:
            assert_identical(got[key], expected[key], f"{where}/{key}")
    elif isinstance(expected, torch.Tensor):
        assert got.dtype == expected.dtype and torch.equal(got, expected), where
    else:
        assert got == expected, where


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The scenarios in this process, without a group, one thread (as every rank has)."""
    out = tmp_path_factory.mktemp("one_process")
    previous = torch.get_num_threads()
    try:
        with use_backend("torch"):
            dist_worker.run(str(out))
    finally:
        torch.set_num_threads(previous)
    return out


def run_ranks(world: int, out) -> list:
    store = out / "store"
    commands = [python("-m", "tests.dist_worker", str(out), str(store))] * world
    envs = [base_env(RANK=str(r), WORLD_SIZE=str(world)) for r in range(world)]
    finished = launch(commands, envs, timeout=LAUNCH_TIMEOUT)
    for r, f in enumerate(finished):
        assert f.returncode == 0, f"rank {r}: {f.stderr[-3000:]}"
    return finished


@pytest.mark.parametrize("world", [2, 3])
def test_dawin_on_several_ranks_gives_the_one_process_bits(world, reference, tmp_path):
    """calibrate, calibrate_from_logits (per-batch and one tensor, offset adjustment),
    predict, per-sample mode, DaWinMultiTask and evaluate: 13 samples in batches of 3
    (uneven shards), 2 samples in batches of 1 (with 3 ranks, one has no sample)."""
    run_ranks(world, tmp_path)
    for name in ("calibrated", "tiny", "multitask"):
        got = torch.load(tmp_path / f"{name}.pt", weights_only=True)
        expected = torch.load(reference / f"{name}.pt", weights_only=True)
        if "world_size" in expected:
            assert (got.pop("world_size"), expected.pop("world_size")) == (world, 1)
        assert_identical(got, expected, name)
    report = json.loads(torch.load(tmp_path / "calibrated.pt")["evaluate"])
    assert len(report["_per_sample"]["cluster"]) == 13
    reference_errors = json.loads((reference / "errors_rank0.json").read_text())
    assert reference_errors["failing_batches"][:2] == ["RuntimeError", "corrupt batch on rank 0"]
    assert reference_errors["same_data_on_every_rank"] is None  # one process: the whole set
    last = world - 1
    for r in range(world):
        seen = json.loads((tmp_path / f"errors_rank{r}.json").read_text())
        # a batch that fails on the last rank fails calibrate on every rank, not a hang
        assert seen["failing_batches"] == [
            "RankFailure", f"rank {last}: RuntimeError: corrupt batch on rank {last}", False]
        # the fit on rank 0 fails: every rank raises it, still a ValueError
        kind, message, is_value_error = seen["fit_fails_on_rank_0"]
        assert kind == "RankValueError" and is_value_error
        assert message == "rank 0: BetaMixture: 13 samples for 20 components; need at least " \
                          "as many samples as components (use per-sample coefficients instead)"
        # the whole set passed on every rank is caught, on every rank
        assert seen["same_data_on_every_rank"][0] == "ValueError"
        assert "every rank passed the same 13 samples" in seen["same_data_on_every_rank"][1]
        assert seen["in_step"] == list(range(world))
