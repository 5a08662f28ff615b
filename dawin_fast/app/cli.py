"""The ``dawin-fast`` command.

    dawin-fast demo        DaWin on two small ViTs trained on scikit-learn's digits
    dawin-fast eval        DaWin on your own open_clip checkpoints and dataset
    dawin-fast bench       the fused-kernel benchmarks on this machine
    dawin-fast selfcheck   the fused op against a float64 reference

Data parallel: torchrun --nproc-per-node N -m dawin_fast.app.cli eval ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _temperatures(value: str) -> tuple[float, ...] | str:
    """"0.96,1.0066" or an open_clip name from the paper ("ViT-B-16")."""
    from ..algorithm.coefficients import TEMPERATURES

    if value in TEMPERATURES:
        return TEMPERATURES[value]
    try:
        temps = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"temperatures must be comma-separated numbers or one of {sorted(TEMPERATURES)}"
        ) from None
    if any(not t > 0 for t in temps):
        raise argparse.ArgumentTypeError("temperatures must be positive")
    return temps


def _device(value: str | None) -> str:
    if value is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if value.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {value!r} requested but CUDA is not available")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dawin-fast", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="DaWin on two small ViTs trained on digits (no download)")
    demo.add_argument("--temperatures", type=_temperatures, default=(1.0, 1.0),
                      help="T_0,T_1 for the entropies (default 1,1)")
    demo.add_argument("--offset-adjustment", action="store_true",
                      help="the paper's offset adjustment of λ")
    demo.add_argument("--clusters", type=int, default=3, help="mixture components (default 3)")
    demo.add_argument("--plot", metavar="PNG", help="save accuracy and coefficient plots")
    demo.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--output", metavar="JSON", help="also write the report as JSON")

    ev = sub.add_parser("eval", help="DaWin on your open_clip checkpoints")
    ev.add_argument("--arch", required=True, help="open_clip architecture, e.g. ViT-B-32")
    ev.add_argument("--model-config", metavar="JSON",
                    help="an open_clip model config file for a custom architecture "
                         "(its file name, without .json, is the --arch name)")
    ev.add_argument("--checkpoints", nargs="+", required=True, metavar="PATH",
                    help="M state dicts (.pt weights-only pickles or .safetensors), model 0 "
                         "first (e.g. zero-shot, then fine-tuned); full CLIP or visual only")
    ev.add_argument("--heads", nargs="+", required=True, metavar="PATH",
                    help="M heads: a [C, D] tensor (zero-shot, logit scale folded in) or a "
                         "{'weight', 'bias'} linear head")
    ev.add_argument("--data", required=True, metavar="PATH",
                    help="an ImageFolder directory, or a .pt file {'images', 'labels'}")
    ev.add_argument("--clusters", type=int, default=3)
    ev.add_argument("--temperatures", type=_temperatures, default=None)
    ev.add_argument("--offset-adjustment", action="store_true")
    ev.add_argument("--wise-lambda", type=float, default=0.5)
    ev.add_argument("--per-batch", action="store_true",
                    help="fit the mixture on each batch (default: on the whole dataset)")
    ev.add_argument("--no-normalize", action="store_true",
                    help="do not L2-normalise features before the heads")
    ev.add_argument("--batch-size", type=int, default=256)
    ev.add_argument("--workers", type=int, default=2)
    ev.add_argument("--device")
    ev.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    ev.add_argument("--output", default="dawin_report.json", metavar="JSON")

    bench = sub.add_parser("bench", help="the fused-kernel benchmarks on this machine")
    bench.add_argument("--output", metavar="MD", help="also write the markdown tables here")
    bench.add_argument("--methods", nargs="+", metavar="METHOD",
                       help="methods to time (default: all; materialize_compiled runs "
                            "torch.compile max-autotune, minutes per shape on a GPU)")
    bench.add_argument("--filter", metavar="TEXT",
                       help="only cases whose id contains TEXT (e.g. ViT-B-32-fc1)")
    bench.add_argument("--e2e", action="store_true",
                       help="the end-to-end DaWin benchmark (whole ViT, rebuild loops) "
                            "instead of the layer benchmarks")

    sub.add_parser("selfcheck", help="the fused op against a float64 reference")
    return parser


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    report = run_demo(temperatures=args.temperatures, offset_adjustment=args.offset_adjustment,
                      n_clusters=args.clusters, device=_device(args.device), seed=args.seed,
                      plot=args.plot)
    if args.output:
        _write_json(report, args.output)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .checkpoints import CheckpointError
    from .parallel import session

    if len(args.checkpoints) < 2:
        raise CheckpointError("eval needs at least two checkpoints")
    if len(args.heads) != len(args.checkpoints):
        raise CheckpointError(f"{len(args.checkpoints)} checkpoints but {len(args.heads)} heads")
    device, dtype = _device(args.device), DTYPES[args.dtype]
    with session(device) as run:  # under torchrun: this rank's device, a process group
        return _eval(args, run, device, dtype)


def _eval(args: argparse.Namespace, run, device: str, dtype: torch.dtype) -> int:
    """``eval`` in one process or as one rank (``run``); rank 0 prints and writes."""
    from open_clip.transform import image_transform

    from .. import distributed
    from ..nn.classifier import DaWinClassifier
    from ..nn.vit import DaWinViT
    from .checkpoints import load_dataset, load_head, load_visuals
    from .evaluate import EvalConfig, evaluate, format_table

    with distributed.shared_errors():  # a rank that cannot load stops every rank
        visuals = load_visuals(args.arch, args.checkpoints, args.model_config)
        heads = [load_head(path) for path in args.heads]
        classifier = DaWinClassifier(DaWinViT.from_open_clip(visuals), heads,
                                     normalize=not args.no_normalize).to(device=run.device,
                                                                         dtype=dtype)
        dataset = load_dataset(args.data, image_transform(visuals[0].image_size,
                                                          is_train=False))
    # this rank's whole global batches: the same batches as one process (see distributed)
    loader = torch.utils.data.DataLoader(distributed.shard(dataset, args.batch_size),
                                         batch_size=args.batch_size, num_workers=args.workers)
    batches = _on_device(loader, run.device, dtype)
    config = EvalConfig(temperatures=args.temperatures, offset_adjustment=args.offset_adjustment,
                        n_clusters=args.clusters, wise_lambda=args.wise_lambda,
                        calibrated=not args.per_batch, batch_size=args.batch_size)
    results = evaluate(classifier, batches, config, progress=run.is_main)
    if not run.is_main:
        return 0
    print(format_table({"accuracy": results}))
    report = {"arch": args.arch, "checkpoints": args.checkpoints, "heads": args.heads,
              "data": args.data, "n": len(dataset), "device": device, "dtype": args.dtype,
              "world_size": run.world_size, "config": dataclasses.asdict(config),
              "methods": {k: v for k, v in results.items() if not k.startswith("_")},
              "mixture": results.get("_mixture"),
              "per_sample": {"coefficients": results["_coefficients"],
                             **results["_per_sample"]}}
    _write_json(report, args.output)
    return 0


class _on_device:
    """Re-iterable view of a loader, moving batches to the device and dtype."""

    def __init__(self, loader, device, dtype):
        self.loader, self.device, self.dtype = loader, device, dtype

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for images, labels in self.loader:
            yield images.to(self.device, self.dtype), labels.to(self.device)


def cmd_bench(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..bench import layers as bench

    command = " ".join(["dawin-fast", *sys.argv[1:]]) if sys.argv[1:2] == ["bench"] \
        else "dawin-fast bench"
    if args.e2e:
        from ..bench import e2e as bench_e2e

        methods = tuple(args.methods or bench_e2e.METHODS)
        unknown = sorted(set(methods) - set(bench_e2e.METHODS))
        if unknown:
            raise ValueError(f"unknown methods {unknown}; choose from {list(bench_e2e.METHODS)}")
        table = bench_e2e.render_markdown(bench_e2e.run(methods),
                                          bench.environment_header(command))
        return _print_table(table, args.output)
    methods = tuple(args.methods or bench.METHODS)
    unknown = sorted(set(methods) - set(bench.METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {list(bench.METHODS)}")
    if "fused" not in methods:
        methods = ("fused", *methods)
    cases = [c for c in bench.default_cases() if not args.filter or args.filter in c.id]
    if not cases:
        raise ValueError(f"no benchmark case id contains {args.filter!r}")
    records = bench.run(cases, methods, progress=lambda c: tqdm(c, desc="benchmark cases"))
    table = bench.render_markdown(records, bench.environment_header(command))
    return _print_table(table, args.output)


def _print_table(table: str, output: str | None) -> int:
    print(table)
    if output:
        with open(output, "w", encoding="utf-8") as f:
            f.write(table + "\n")
    return 0


def cmd_selfcheck(args: argparse.Namespace) -> int:
    from .selfcheck import main

    return main()


def _write_json(report: dict, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, default=str)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..distributed import RankFailure
    from .checkpoints import CheckpointError
    from .parallel import is_main, launched

    try:
        if launched() and args.command != "eval" and os.environ["WORLD_SIZE"] != "1":
            raise ValueError("only eval runs under torchrun")
        return {"demo": cmd_demo, "eval": cmd_eval, "bench": cmd_bench,
                "selfcheck": cmd_selfcheck}[args.command](args)
    except (CheckpointError, ValueError, RankFailure) as err:
        # Under torchrun an error shared by every rank is printed once, by rank 0.
        if is_main() or not isinstance(err, RankFailure):
            print(f"dawin-fast {args.command}: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, ValueError) else 1


if __name__ == "__main__":
    sys.exit(main())
