"""One rank of the multi-process API tests (``tests/test_distributed.py``), on gloo.

``python -m tests.dist_worker OUT_DIR STORE`` with ``RANK`` and ``WORLD_SIZE`` set joins a
gloo group through the file ``STORE`` and runs every scenario; ``run(out_dir)`` runs them
in one process without a group (the reference). Each scenario's per-sample results are
gathered to rank 0 in dataset order and rank 0 saves them to ``OUT_DIR/<scenario>.pt``;
the errors every rank saw are saved per rank (``errors_rank<r>.json``).

Every rank uses one intra-op thread (as torchrun does for several processes per node) and
the PyTorch path of the op.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from dawin_fast import (
    DaWin,
    DaWinClassifier,
    DaWinMultiTask,
    DaWinViT,
    distributed,
    task_vectors,
    use_backend,
)
from dawin_fast.app.evaluate import EvalConfig, evaluate
from tests.models import tiny_open_clip_visual

NUM_CLASSES = 5


def dataset(n: int, seed: int = 0) -> torch.utils.data.TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.TensorDataset(torch.randn(n, 3, 16, 16, generator=gen),
                                          torch.randint(0, NUM_CLASSES, (n,), generator=gen))


def shard_batches(data, batch_size: int, full: bool = False) -> list[tuple]:
    """This rank's batches (``full``: the whole set's, on every rank: a misuse)."""
    subset = data if full else distributed.shard(data, batch_size)
    return list(torch.utils.data.DataLoader(subset, batch_size=batch_size))


def classifier(num_models: int = 2) -> DaWinClassifier:
    visuals = [tiny_open_clip_visual(s) for s in range(num_models)]
    gen = torch.Generator().manual_seed(0)
    heads = [torch.randn(NUM_CLASSES, 12, generator=gen) * 3 for _ in range(num_models)]
    return DaWinClassifier(DaWinViT.from_open_clip(visuals), heads)


def rows(parts: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor | None:
    """This rank's per-batch rows, every rank's gathered on rank 0 in dataset order."""
    local = torch.cat(parts) if parts else like.new_empty((0, *like.shape[1:]))
    return distributed.gather_rows(local, dst=0)


def mixture_state(mixture) -> dict:
    if mixture is None:
        return {}
    return {k: torch.from_numpy(getattr(mixture, k)) for k in ("alphas_", "betas_", "weights_",
                                                                 "means_") if hasattr(mixture, k)}


def predictions(dawin, batches, like_rows: int, **kwargs) -> dict:
    """predict(return_details=True) over this rank's batches, gathered."""
    out = [dawin.predict(images, return_details=True, **kwargs) for images, _ in batches]
    m = like_rows
    return {
        "logits": rows([o.logits for o in out], torch.empty(0, NUM_CLASSES)),
        "coefficients": rows([o.coefficients for o in out], torch.empty(0, m)),
        "applied": rows([o.applied for o in out], torch.empty(0, m)),
        "labels": rows([o.labels if o.labels is not None else
                        torch.full((o.logits.shape[0],), -1) for o in out],
                       torch.empty(0, dtype=torch.int64)),
    }


def scenario_calibrated(model: DaWinClassifier, n: int, batch_size: int, clusters: int) -> dict:
    data = dataset(n)
    batches = shard_batches(data, batch_size)
    images = [x for x, _ in batches]
    result = {}
    dawin = DaWin(model, mode="mixture", n_clusters=clusters, temperatures=(0.96, 1.0066))
    dawin.calibrate(images)
    result["calibrate"] = {**mixture_state(dawin.mixture), **predictions(dawin, batches, 2)}
    # offset adjustment, from per-batch logits
    expert = [dawin.expert_logits(x) for x in images]
    adjusted = DaWin(model, mode="mixture", n_clusters=clusters, offset_adjustment=True)
    adjusted.calibrate_from_logits(expert)
    result["offset"] = {"offset": torch.tensor(adjusted.offset, dtype=torch.float64),
                        **mixture_state(adjusted.mixture), **predictions(adjusted, batches, 2)}
    # one tensor of this rank's logits
    one = DaWin(model, mode="mixture", n_clusters=clusters)
    logits = torch.cat(expert, dim=1) if expert else torch.empty(2, 0, NUM_CLASSES)
    one.calibrate_from_logits(logits)
    result["one_tensor"] = mixture_state(one.mixture)
    result["per_sample"] = predictions(DaWin(model, mode="per_sample"), batches, 2)
    report = evaluate(model, batches, EvalConfig(n_clusters=clusters, offset_adjustment=True))
    for name in list(report):
        if isinstance(report[name], dict):
            report[name].pop("seconds", None)
            report[name].pop("images_per_s", None)
    result["world_size"] = report.pop("_world_size")  # the one field that may differ
    result["evaluate"] = json.dumps(report)
    return result


def scenario_multitask(n: int, batch_size: int) -> dict:
    pretrained = tiny_open_clip_visual(0)
    tasks = [tiny_open_clip_visual(s) for s in (1, 2, 3)]
    encoder = DaWinViT.from_open_clip(task_vectors(pretrained, tasks))
    gen = torch.Generator().manual_seed(0)
    heads = [torch.randn(c, 12, generator=gen) * 3 for c in (4, 5, 6)]
    dawin = DaWinMultiTask(encoder, heads, n_clusters=2)
    batches = shard_batches(dataset(n, seed=1), batch_size)
    dawin.calibrate([x for x, _ in batches], task=2)
    out = [dawin.predict(x, task=2, return_details=True) for x, _ in batches]
    return {**mixture_state(dawin.mixtures[2]),
            "logits": rows([o.logits for o in out], torch.empty(0, 6)),
            "labels": rows([o.labels for o in out], torch.empty(0, dtype=torch.int64))}


class _FailingBatches:
    """Batches that raise on the last rank after its first batch (a corrupt file)."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        for i, (images, _) in enumerate(self.batches):
            if distributed.rank() == distributed.world_size() - 1 and i == 1:
                raise RuntimeError(f"corrupt batch on rank {distributed.rank()}")
            yield images


def scenario_errors(model: DaWinClassifier) -> dict:
    """Errors every rank must see; then one more collective shows the ranks are in step."""
    seen = {}
    batches = shard_batches(dataset(13), 2)
    for name, call in {
        "failing_batches": lambda: DaWin(model).calibrate(_FailingBatches(batches)),
        "fit_fails_on_rank_0": lambda: DaWin(model, n_clusters=20).calibrate(
            [x for x, _ in batches]),
        "same_data_on_every_rank": lambda: DaWin(model).calibrate(
            [x for x, _ in shard_batches(dataset(13), 2, full=True)]),
    }.items():
        try:
            call()
            seen[name] = None
        except Exception as err:  # noqa: BLE001 - recorded for the test to check
            seen[name] = [type(err).__name__, str(err), isinstance(err, ValueError)]
    seen["in_step"] = distributed.gather_objects(distributed.rank())
    return seen


@torch.no_grad()
def run(out_dir: str) -> None:
    torch.set_num_threads(1)
    out = Path(out_dir)
    model = classifier()
    results = {
        "calibrated": scenario_calibrated(model, n=13, batch_size=3, clusters=3),
        # fewer samples than ranks: with world size 3, rank 2 has no batch
        "tiny": scenario_calibrated(model, n=2, batch_size=1, clusters=2),
        "multitask": scenario_multitask(n=11, batch_size=4),
    }
    errors = scenario_errors(model)
    (out / f"errors_rank{distributed.rank()}.json").write_text(json.dumps(errors))
    if distributed.rank() == 0:
        for name, result in results.items():
            torch.save(result, out / f"{name}.pt")


def main() -> None:
    out_dir, store = sys.argv[1], sys.argv[2]
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{store}", rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]))
    try:
        with use_backend("torch"):
            run(out_dir)
        torch.distributed.barrier()  # all collectives done on every rank before teardown
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
