"""The ``dawin-fast`` command line (also ``python -m dawin_fast``).

Every command validates its arguments and inspects its input files before any expensive
work, and checks that its output files can be written; a mistake prints one line naming
the culprit and exits with code 2. Exit codes: 0 success, 1 internal error (a bug; the
traceback with ``--debug`` or ``DAWIN_FAST_DEBUG=1``), 2 user error, 130 interrupted.

Data parallel: ``torchrun --nproc-per-node N -m dawin_fast.app.cli eval ...`` (only
``eval``). Every rank validates the arguments and files, then rank 0 alone prints and
writes; an error on any rank reaches every rank (``dawin_fast.distributed``), and rank 0
prints it once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .. import _launch
from . import options
from .errors import (
    DEBUG_ENV,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USER,
    UserError,
    debug_requested,
    one_line,
)
from .outputs import check_distinct, check_writable, write_text

DESCRIPTION = ("Fast DaWin (training-free dynamic weight interpolation): the demo, DaWin on "
               "your own open_clip checkpoints, the fused-kernel benchmarks and a self-check.")
EPILOG = (f"Exit codes: 0 success, 1 internal error, 2 user error (bad argument or file, "
          f"unusable output), 130 interrupted (see docs/errors.md). "
          f"Add --debug (or set {DEBUG_ENV}=1) to see tracebacks. Run 'dawin-fast COMMAND "
          f"--help' for a command's options.")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: ...)", shown only where there is a default to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line naming the argument (argparse prints the whole usage)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USER, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dawin_fast")
    except PackageNotFoundError:  # run from a source tree without installing
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    from ..bench import e2e as bench_e2e
    from ..bench import layers as bench_layers
    from .parallel import DEFAULT_TIMEOUT_S

    parser = _Parser(prog="dawin-fast", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--debug", action="store_true",
                        help=f"show tracebacks (or set {DEBUG_ENV}=1)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help=f"show tracebacks (or set {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                title="commands")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".",
                              parents=[common], formatter_class=_Formatter)

    demo = command("demo", "DaWin on two small ViTs trained on scikit-learn's digits "
                           "(no download)")
    demo.add_argument("--temperatures", type=options.temperatures, default="1,1",
                      metavar="T0,T1",
                      help="softmax temperatures of the two models' entropies, or a model "
                           "name of the paper's (ViT-B-32, ViT-B-16, ViT-L-14)")
    demo.add_argument("--offset-adjustment", action="store_true",
                      help="the paper's offset adjustment of λ")
    demo.add_argument("--clusters", type=options.positive_int, default=3, metavar="K",
                      help="components of the Beta mixture")
    demo.add_argument("--epochs", type=options.epochs, default="40,25",
                      metavar="GENERAL,FINETUNED",
                      help="training epochs of the general model and of its fine-tuned copy")
    demo.add_argument("--seed", type=options.seed, default=0, help="seed of the data split, "
                      "the training and the mixture")
    demo.add_argument("--device", type=options.device, metavar="DEVICE",
                      help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    demo.add_argument("--plot", metavar="PNG",
                      help="save the accuracy and coefficient plots (.png, .pdf, .svg, ...)")
    demo.add_argument("--output", metavar="JSON", help="also write the report as JSON")

    ev = command("eval", "DaWin on your own open_clip checkpoints and datasets (the paper's "
                         "robust fine-tuning table)")
    ev.add_argument("--arch", required=True,
                    help="open_clip architecture of the checkpoints, e.g. ViT-B-32 (OpenAI's "
                         "weights are QuickGELU: ViT-B-32-quickgelu; a mismatch the "
                         "checkpoints show is corrected with a note)")
    ev.add_argument("--model-config", metavar="JSON",
                    help="an open_clip model config file for a custom architecture "
                         "(its file name, without .json, is the --arch name)")
    ev.add_argument("--checkpoints", nargs="+", required=True, metavar="CKPT",
                    help="M >= 2 checkpoints, model 0 first (zero-shot, then fine-tuned): "
                         "open_clip pretrained names (openai, laion2b_s34b_b79k, ...), "
                         "open_clip or OpenAI CLIP state dicts (full or visual only), "
                         "model-soups, wise-ft or task-vectors checkpoints (.pt or "
                         ".safetensors)")
    ev.add_argument("--trust-pickles", action="store_true",
                    help="read pickled models (torch.save(model), e.g. wise-ft's "
                         "ImageClassifier) without their code: only for files you trust, as "
                         "unpickling can run code")
    ev.add_argument("--heads", nargs="+", metavar="PATH",
                    help="M heads, one per checkpoint: a [C, D] tensor (zero-shot, logit "
                         "scale folded in) or a {'weight', 'bias'} linear head (default: the "
                         "checkpoint's own classification head, else a zero-shot head from "
                         "its text tower)")
    ev.add_argument("--class-names", metavar="TXT",
                    help="zero-shot heads: one class name per line (default: open_clip's "
                         "ImageNet class names)")
    ev.add_argument("--templates", metavar="TXT",
                    help="zero-shot heads: one prompt per line with {} for the class name "
                         "(default: OpenAI's 80 ImageNet templates)")
    ev.add_argument("--data", required=True, action="append", type=options.data_spec,
                    metavar="NAME=PATH",
                    help="a dataset, repeated; the first is the in-distribution one. NAME "
                         "imagenet, imagenet-v2, imagenet-r, imagenet-a, imagenet-sketch or "
                         "objectnet reads the official download's layout and classes; any "
                         "other NAME (or a bare PATH) is an ImageFolder directory or a .pt "
                         "file {'images': [N, 3, H, W] normalised floats, 'labels': [N]}")
    ev.add_argument("--seed", type=options.seed, default=0, help="seed of the mixture fits")
    ev.add_argument("--cache-dir", metavar="DIR",
                    help=f"where zero-shot heads and each model's logits on each dataset are "
                         f"cached, keyed by file contents (default: ${options.CACHE_ENV}, "
                         f"else ~/.cache/dawin_fast)")
    ev.add_argument("--no-cache", action="store_true",
                    help="neither read nor write the cache")
    ev.add_argument("--clusters", type=options.positive_int, default=3, metavar="K",
                    help="components of the mixture (fewer than the images it is fitted on)")
    ev.add_argument("--temperatures", type=options.temperatures, metavar="T0,T1,...",
                    help="softmax temperatures, one per model, or a model name of the "
                         "paper's (ViT-B-32, ViT-B-16, ViT-L-14) (default: 1 for each)")
    ev.add_argument("--offset-adjustment", action="store_true",
                    help="the paper's offset adjustment of λ (two models)")
    ev.add_argument("--wise-lambda", type=options.unit_float, default=0.5, metavar="λ",
                    help="weight on model 1 of the WiSE-FT baseline, in [0, 1]")
    ev.add_argument("--per-batch", action="store_true",
                    help="fit the mixture on each batch (default: once on the whole dataset)")
    ev.add_argument("--no-normalize", action="store_true",
                    help="do not L2-normalise the features before the heads")
    ev.add_argument("--batch-size", type=options.positive_int, default=256, metavar="B",
                    help="images per batch")
    ev.add_argument("--workers", type=options.non_negative_int, default=2, metavar="N",
                    help="DataLoader worker processes for decoding images")
    ev.add_argument("--device", type=options.device, metavar="DEVICE",
                    help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    ev.add_argument("--dtype", choices=sorted(options.DTYPES), default="float32",
                    help="dtype of the models and images")
    ev.add_argument("--dist-timeout", type=options.positive_seconds, default=DEFAULT_TIMEOUT_S,
                    metavar="SECONDS",
                    help="under torchrun: how long a rank waits for the others in a "
                         "collective before it names the silent rank and stops")
    ev.add_argument("--output", default="dawin_report.json", metavar="JSON",
                    help="where to write the JSON report (replaced if it exists)")
    ev.add_argument("--plot", metavar="PNG",
                    help="also save the accuracy and coefficient plots (.png, .pdf, .svg, ...)")

    bench = command("bench", "the fused-kernel benchmarks on this machine")
    bench.add_argument("--methods", nargs="+", metavar="METHOD",
                       choices=(*bench_layers.METHODS, *bench_e2e.METHODS),
                       help=f"methods to time (default: all that run here); layer methods: "
                            f"{', '.join(bench_layers.METHODS)} (materialize_compiled runs "
                            f"torch.compile max-autotune, minutes per shape on a GPU); with "
                            f"--e2e: {', '.join(bench_e2e.METHODS)}")
    bench.add_argument("--filter", metavar="TEXT",
                       help="only cases whose id contains TEXT, e.g. fc2-per_sample; ids are "
                            "MODEL-LAYER-PATTERN-M<models>-<images>x<tokens>, MODEL ViT-B-32, "
                            "ViT-B-16 or ViT-L-14 on a GPU (e.g. ViT-B-32-fc1) and toy on a "
                            "CPU (toy sizes, layers qkv and fc2)")
    bench.add_argument("--e2e", action="store_true",
                       help="the end-to-end DaWin benchmark (whole ViT, rebuild loops) "
                            "instead of the layer benchmarks")
    bench.add_argument("--suite", choices=bench_layers.SUITES, default="vit",
                       help="layer cases: vit (the P1-P4 target shapes, default) or lm "
                            "(Llama-3-8B prefill and decode shapes, followed by the traffic "
                            "model's predictions)")
    bench.add_argument("--output", metavar="MD", help="also write the markdown tables here")

    check = command("selfcheck", "every kernel strategy and config against the reference "
                                 "on this GPU, and the fused op against a float64 reference")
    check.add_argument("--device", type=options.device, metavar="DEVICE",
                       help="cuda or cuda:N: every kernel strategy and config at ViT-B/32 "
                            "shapes, then the fused op; cpu: the fused op's PyTorch path "
                            "(default: cuda if available, else cpu)")
    check.add_argument("--json", metavar="FILE",
                       help="also write the results as JSON (send it with a bug report)")
    return parser


PROGRESS_ENV = "DAWIN_FAST_PROGRESS"


def _progress() -> bool:
    """Progress bars on stderr when it is a terminal (not in logs, not in tests), or when
    ``DAWIN_FAST_PROGRESS=1`` asks for them (a cluster job's log)."""
    return sys.stderr.isatty() or os.environ.get(PROGRESS_ENV) == "1"


# ------------------------------------------------------------------------------- demo


def prepare_demo(args: argparse.Namespace) -> None:
    """Everything the demo needs, checked before it trains."""
    import importlib.util

    from .demo import TEST_IMAGES

    if len(args.temperatures) != 2:
        raise UserError(f"--temperatures: the demo has 2 models, got "
                        f"{len(args.temperatures)} values")
    if args.clusters >= TEST_IMAGES:
        raise UserError(f"--clusters {args.clusters}: the mixture is fitted on each test set "
                        f"of {TEST_IMAGES} images and needs more images than clusters")
    if importlib.util.find_spec("sklearn") is None:
        raise UserError("the demo needs scikit-learn: pip install 'dawin_fast[demo]'")
    if args.output:
        check_writable(args.output, "--output")
    if args.plot:
        from .plots import check_plot_path

        check_plot_path(args.plot)
    check_distinct({"--output": args.output, "--plot": args.plot}, {})


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    prepare_demo(args)
    report = run_demo(temperatures=args.temperatures, offset_adjustment=args.offset_adjustment,
                      n_clusters=args.clusters, device=args.device or options.default_device(),
                      seed=args.seed, plot=args.plot, epochs=args.epochs,
                      progress=_progress(), progress_lines=not _progress())
    if args.output:
        _write_json(report, args.output)
    return EXIT_OK


# ------------------------------------------------------------------------------- eval


def cmd_eval(args: argparse.Namespace) -> int:
    from .eval_command import prepare_eval, progress_bar, run_eval, write_outputs
    from .parallel import is_main, session

    show = _progress() and is_main()
    plan = prepare_eval(args, progress_bar("checking images") if show else iter)
    if is_main():
        for note in plan.notes:
            print(note)
    # under torchrun: this rank's device, a process group
    with session(plan.device, args.dist_timeout) as run:
        report = run_eval(plan, run, progress=show)
        if run.is_main:
            write_outputs(plan, report)
    return EXIT_OK


# ------------------------------------------------------------------------------ bench


def cmd_bench(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..bench import layers as bench

    _drop_cuda_home_warning()
    command = " ".join(["dawin-fast", *sys.argv[1:]]) if sys.argv[1:2] == ["bench"] \
        else "dawin-fast bench"
    if args.output:
        check_writable(args.output, "--output")
    if args.e2e:
        from ..bench import e2e as bench_e2e

        methods = tuple(args.methods or bench_e2e.METHODS)
        wrong = [m for m in methods if m not in bench_e2e.METHODS]
        if wrong:
            raise UserError(f"--methods {wrong[0]}: a layer method; with --e2e choose from "
                            f"{', '.join(bench_e2e.METHODS)}")
        if args.filter:
            raise UserError("--filter selects layer cases; the --e2e benchmark has one case")
        if getattr(args, "suite", "vit") != "vit":
            raise UserError("--suite selects layer cases; the --e2e benchmark has one case")
        table = bench_e2e.render_markdown(bench_e2e.run(methods),
                                          bench.environment_header(command))
        return _print_table(table, args.output)
    wrong = [m for m in args.methods or () if m not in bench.METHODS]
    if wrong:
        raise UserError(f"--methods {wrong[0]}: an --e2e method; without --e2e choose from "
                        f"{', '.join(bench.METHODS)}")
    for method in args.methods or ():
        reason = bench.unavailable_here(method)
        if reason:
            raise UserError(f"--methods {method}: cannot run here: {reason}")
    methods = tuple(args.methods or (m for m in bench.METHODS if not bench.unavailable_here(m)))
    if args.methods is None:
        for method in sorted(set(bench.METHODS) - set(methods)):
            print(f"note: not timing {method}: {bench.unavailable_here(method)}")
    if "fused" not in methods:
        methods = ("fused", *methods)
    suite = getattr(args, "suite", "vit")
    here = bench.default_cases(suite)
    cases = [c for c in here if not args.filter or args.filter in c.id]
    if not cases:
        gpu_only = suite == "vit" and here != bench.gpu_cases() and any(
            args.filter in c.id for c in bench.gpu_cases())
        ids = ", ".join(c.id for c in here[:6]) + (", ..." if len(here) > 6 else "")
        raise UserError(f"--filter {args.filter}: no benchmark case id here contains it"
                        f"{' (it names GPU cases: real ViT layer shapes)' if gpu_only else ''};"
                        f" the ids here: {ids}")
    records = bench.run(cases, methods, progress=lambda c: tqdm(
        c, desc="benchmark cases", disable=None if _progress() else True))
    table = bench.render_markdown(records, bench.environment_header(command))
    if suite == "lm":  # the model's view of the same shapes (bf16, H100), for comparison
        shapes = [c for c in bench.lm_cases() if not args.filter or args.filter in c.id]
        table += "\n" + bench.render_lm_predictions(bench.lm_predictions(shapes)) + "\n"
    return _print_table(table, args.output)


class _NoCudaHomeWarning(logging.Filter):
    """Drops torch's ``No CUDA runtime is found, using CUDA_HOME=...`` (logged when
    ``torch.compile`` looks for a compiler on a machine with a CUDA toolkit and no GPU):
    the table's header already says that the run is on a CPU."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No CUDA runtime is found")


def _drop_cuda_home_warning() -> None:
    logger = logging.getLogger("torch.utils.cpp_extension")
    if not any(isinstance(f, _NoCudaHomeWarning) for f in logger.filters):
        logger.addFilter(_NoCudaHomeWarning())


def _print_table(table: str, output: str | None) -> int:
    print(table)
    if output:
        replaced = write_text(output, table + "\n")
        print(f"{'replaced' if replaced else 'wrote'} {output}")
    return EXIT_OK


def cmd_selfcheck(args: argparse.Namespace) -> int:
    from .selfcheck import run

    if args.json:
        check_writable(args.json, "--json")
    return run(args.device or options.default_device(), args.json)


def _write_json(report: dict, path: str) -> None:
    import json

    replaced = write_text(path, json.dumps(report, indent=2, default=str) + "\n")
    print(f"{'replaced' if replaced else 'wrote'} {path}")


COMMANDS = {"demo": cmd_demo, "eval": cmd_eval, "bench": cmd_bench, "selfcheck": cmd_selfcheck}


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (see the module docstring)."""
    try:  # Ctrl-C from here on (imports included) is one line and 130
        _launch.restore_interrupts()
        return _main(argv)
    except KeyboardInterrupt:
        if debug_requested("--debug" in (sys.argv[1:] if argv is None else argv)):
            raise
        from .parallel import is_main

        if is_main():
            print("dawin-fast: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(argv: list[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, --version (0), usage errors (2)
        return done.code if isinstance(done.code, int) else EXIT_USER
    debug = debug_requested(getattr(args, "debug", False))
    prog = f"dawin-fast {args.command}"
    from ..distributed import RankFailure, RankTimeout
    from .parallel import is_main, launched

    try:
        if launched() and args.command != "eval":
            raise UserError(f"only eval runs under torchrun; run dawin-fast {args.command} "
                            f"without it")
        return COMMANDS[args.command](args)
    except RankTimeout as err:  # each live rank has its own: the lowest one prints it
        if debug:
            raise
        if err.reporter == int(os.environ.get("RANK", "0")):
            print(f"{prog}: error: {err} (--dist-timeout "
                  f"{getattr(args, 'dist_timeout', 0):g} s)", file=sys.stderr)
        return EXIT_INTERNAL
    except RankFailure as err:  # shared by every rank: rank 0 prints it once
        if debug:
            raise
        if is_main():
            print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_USER if err.user_error else EXIT_INTERNAL
    except UserError as err:
        if debug:
            raise
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        if debug:
            raise
        if is_main():
            print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        if debug:
            raise
        print(f"{prog}: internal error: {type(err).__name__}: {one_line(err)} (run with "
              f"--debug or {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
