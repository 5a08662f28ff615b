"""Every documented user mistake, and the one line it must produce.

Two tables: every argument of the ``dawin-fast`` command (exit code 2, one line on stderr
naming the argument or file), and the documented errors of the public functions (the
exception type and a fragment of its one-line message).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dawin_fast import (
    BetaMixture,
    DaWin,
    DaWinClassifier,
    DaWinLinear,
    DaWinMultiTask,
    DaWinViT,
    DirichletMixture,
    Routing,
    coefficients_multi,
    coefficients_two,
    dawinize,
    group_by_labels,
    group_by_rows,
    interp_linear,
    route,
)
from tests.app.cli_files import ARCH, FEATURES, eval_args, make_files, run_error
from tests.models import tiny_open_clip_visual

pytestmark = pytest.mark.usefixtures("torch_backend")  # tests/conftest.py


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = make_files(tmp_path_factory.mktemp("bad-inputs"))
    torch.save(torch.randn(3, FEATURES + 1), root / "head_wide.pt")
    torch.save({"images": torch.randn(4, 3, 8, 8), "labels": torch.zeros(4, dtype=torch.long)},
               root / "data_small.pt")
    (root / "notes.txt").write_text("not a config")
    torch.save({"weight": torch.full((3, FEATURES), float("nan"))}, root / "head_nan.pt")
    return root


# ------------------------------------------------------------------ the command line

# (command, {option: value} for eval (merged into valid arguments) or an argv list,
#  fragments the one-line message must hold). "{f}" is the folder of the tiny files.
CLI = [
    ("top", [], ["required: COMMAND"]),
    ("top", ["fly"], ["invalid choice: 'fly'"]),
    ("top", ["--verbose", "demo"], ["unrecognized arguments: --verbose"]),
    ("demo", ["--temperatures", "hot"], ["--temperatures", "got 'hot'"]),
    ("demo", ["--temperatures", "1,-1"], ["--temperatures", "numbers > 0"]),
    ("demo", ["--temperatures", "1,1,1"], ["--temperatures", "the demo has 2 models"]),
    ("demo", ["--offset-adjustment=yes"], ["--offset-adjustment", "ignored explicit argument"]),
    ("demo", ["--clusters", "two"], ["--clusters", "expected an integer, got 'two'"]),
    ("demo", ["--clusters", "-1"], ["--clusters", "expected an integer >= 1"]),
    ("demo", ["--clusters", "5000"], ["--clusters 5000", "needs more images than clusters"]),
    ("demo", ["--epochs", "40"], ["--epochs", "GENERAL,FINETUNED"]),
    ("demo", ["--epochs", "4,0"], ["--epochs", "two integers >= 1"]),
    ("demo", ["--seed", "x"], ["--seed", "expected an integer, got 'x'"]),
    ("demo", ["--seed", "-1"], ["--seed", "expected an integer in [0, 2**63)"]),
    ("demo", ["--device", "tpu"], ["--device", "expected cpu, cuda or cuda:N, got 'tpu'"]),
    ("demo", ["--plot", "{f}/nodir/d.png"], ["--plot", "does not exist"]),
    ("demo", ["--plot", "{f}/d.xyz"], ["--plot", "expected a file name ending in one of"]),
    ("demo", ["--output", "{f}"], ["--output", "is a directory"]),
    ("demo", ["--output", "{f}/d.png", "--plot", "{f}/d.png"], ["--plot", "same file as"]),
    ("eval", {"--arch": None}, ["required: --arch"]),
    ("eval", {"--arch": "RN50", "--model-config": None},
     ["--arch RN50", "not an open_clip VisionTransformer"]),
    ("eval", {"--arch": "no-such-vit", "--model-config": None},
     ["unknown architecture 'no-such-vit'"]),
    ("eval", {"--model-config": "{f}/missing.json"}, ["model config not found"]),
    ("eval", {"--model-config": "{f}/notes.txt"}, ["model config {f}/notes.txt", "not valid JSON"]),
    ("eval", {"--checkpoints": ["{f}/zs.pt"], "--heads": ["{f}/head_zs.pt"]},
     ["--checkpoints", "at least two checkpoints, got 1"]),
    ("eval", {"--checkpoints": ["{f}/zs.pt", "{f}/gone.pt"]},
     ["checkpoint not found: {f}/gone.pt"]),
    ("eval", {"--checkpoints": ["{f}/zs.pt", "{f}/head_zs.pt"]},
     ["checkpoint {f}/head_zs.pt", "not a plain state dict"]),
    ("eval", {"--heads": ["{f}/head_zs.pt"]}, ["--heads", "2 checkpoints but 1 heads"]),
    ("eval", {"--heads": ["{f}/head_zs.pt", "{f}/head_wide.pt"]},
     ["head {f}/head_wide.pt", f"expected [C, {FEATURES}]"]),
    ("eval", {"--heads": ["{f}/head_zs.pt", "{f}/zs.pt"]}, ["head {f}/zs.pt", "expected a [C, D]"]),
    ("eval", {"--heads": ["{f}/head_zs.pt", "{f}/head_nan.pt"]},
     ["head {f}/head_nan.pt", "'weight' contains NaN or infinity"]),
    ("eval", {"--data": "{f}/gone"}, ["dataset not found: {f}/gone"]),
    ("eval", {"--data": "{f}/empty"}, ["dataset {f}/empty", "no class folders"]),
    ("eval", {"--data": "objectnet={f}/empty"}, ["dataset objectnet={f}/empty",
                                                 "no images/ folder"]),
    ("eval", {"--data": "imagenet-v2={f}/images"}, ["dataset imagenet-v2={f}/images",
                                                    "folder 'cat'", "folders 0 ... 999"]),
    ("eval", {"--trust-pickles": "1"}, ["unrecognized arguments: 1"]),
    ("eval", {"--no-cache": "1"}, ["unrecognized arguments: 1"]),
    ("eval", {"--class-names": "{f}/missing.txt"}, ["--class-names {f}/missing.txt",
                                                    "not found"]),
    ("eval", {"--templates": "{f}/notes.txt"}, ["--templates {f}/notes.txt", "needs one {}"]),
    ("eval", {"--seed": "-1"}, ["--seed", "expected an integer in [0, 2**63)"]),
    ("eval", {"--cache-dir": "{f}/notes.txt"}, ["--cache-dir {f}/notes.txt",
                                                "not a directory"]),
    ("eval", {"--data": "{f}/data_small.pt"}, ["dataset {f}/data_small.pt", "[4, 3, 8, 8]",
                                               f"{ARCH} expects [N, 3, 16, 16]"]),
    ("eval", {"--data": "{f}/head_ft.pt"}, ["dataset {f}/head_ft.pt", "'images'"]),
    ("eval", {"--clusters": "0"}, ["--clusters", "expected an integer >= 1"]),
    ("eval", {"--clusters": "9"}, ["--clusters 9", "fitted on the 9 images"]),
    ("eval", {"--clusters": "4", "--per-batch": True}, ["--clusters 4", "each batch of 4"]),
    ("eval", {"--temperatures": "1,nan"}, ["--temperatures", "numbers > 0"]),
    ("eval", {"--temperatures": "1,1,1"}, ["--temperatures", "3 values for 2 models"]),
    ("eval", {"--offset-adjustment": True, "--per-batch": True, "--batch-size": "8",
              "--clusters": "1"}, ["--offset-adjustment", "a batch would hold 1 image"]),
    ("eval", {"--per-batch": True, "--batch-size": "1", "--clusters": "1"},
     ["--clusters 1", "each batch of 1 images", "use a larger --batch-size"]),
    ("eval", {"--offset-adjustment": True, "--checkpoints": ["{f}/zs.pt"] * 3,
              "--heads": ["{f}/head_zs.pt"] * 3},
     ["--offset-adjustment", "defined for two models, got 3 checkpoints"]),
    ("eval", {"--wise-lambda": "1.5"}, ["--wise-lambda", "expected a number in [0, 1]"]),
    ("eval", {"--per-batch": "yes"}, ["unrecognized arguments: yes"]),
    ("eval", {"--no-normalize": "1"}, ["unrecognized arguments: 1"]),
    ("eval", {"--batch-size": "many"}, ["--batch-size", "expected an integer, got 'many'"]),
    ("eval", {"--workers": "-2"}, ["--workers", "expected an integer >= 0"]),
    ("eval", {"--device": "cuda:x"}, ["--device", "expected cpu, cuda or cuda:N"]),
    ("eval", {"--dtype": "float64"}, ["--dtype", "invalid choice: 'float64'"]),
    ("eval", {"--output": "{f}/nodir/r.json"}, ["--output {f}/nodir/r.json", "does not exist"]),
    ("eval", {"--output": "{f}/head_ft.pt"}, ["--output", "would overwrite the --heads file"]),
    ("eval", {"--plot": "{f}/nodir/p.png"}, ["--plot", "does not exist"]),
    ("eval", {"--plot": "/dev/null"}, ["--plot /dev/null", "not a regular file"]),
    ("eval", {"--output": ""}, ["--output", "empty file name"]),
    ("eval", {"--dist-timeout": "0"}, ["--dist-timeout", "expected a number of seconds > 0"]),
    ("eval", {"--plot": "{f}/p"}, ["--plot {f}/p", "expected a file name ending in"]),
    ("bench", ["--methods", "magic"], ["--methods", "invalid choice: 'magic'"]),
    ("bench", ["--methods", "wise_ft"], ["--methods wise_ft", "an --e2e method"]),
    ("bench", ["--e2e", "--methods", "fused"], ["--methods fused", "a layer method"]),
    ("bench", ["--e2e", "--filter", "fc1"], ["--filter", "one case"]),
    ("bench", ["--filter", "no-such-case"], ["--filter no-such-case", "no benchmark case"]),
    ("bench", ["--suite", "gpt"], ["--suite", "invalid choice"]),
    ("bench", ["--e2e", "--suite", "lm"], ["--suite", "layer cases"]),
    ("bench", ["--output", "{f}/nodir/b.md"], ["--output", "does not exist"]),
    ("selfcheck", ["--fast"], ["unrecognized arguments: --fast"]),
    ("selfcheck", ["--device", "tpu"], ["--device", "expected cpu, cuda or cuda:N"]),
    ("selfcheck", ["--json"], ["--json", "expected one argument"]),
]
if not torch.cuda.is_available():
    CLI += [
        ("demo", ["--device", "cuda"], ["--device", "CUDA is not available"]),
        ("eval", {"--device": "cuda:0"}, ["--device", "CUDA is not available"]),
        ("bench", ["--methods", "einsum_grouped_mm"],
         ["--methods einsum_grouped_mm", "cannot run here"]),
    ]


def _cli_id(case) -> str:
    command, args, _ = case
    shown = " ".join(f"{k}={v}" for k, v in args.items()) if isinstance(args, dict) else \
        " ".join(args)
    return f"{command} {shown}"


def _fill(value, folder: str):
    if isinstance(value, list):
        return [_fill(v, folder) for v in value]
    return value.replace("{f}", folder) if isinstance(value, str) else value


@pytest.mark.parametrize("case", CLI, ids=[_cli_id(c) for c in CLI])
def test_cli_argument_errors(case, files, capsys, no_work):
    command, args, fragments = case
    folder = str(files)
    if command == "eval":
        overrides = {k: _fill(v, folder) for k, v in args.items()}
        overrides.setdefault("--output", folder + "/out/bad-inputs-report.json")
        argv = eval_args(files, **overrides)
    else:
        argv = ([] if command == "top" else [command]) + _fill(args, folder)
    run_error(argv, capsys, *_fill(fragments, folder), no_files_in=files / "out")
    assert not (files / "d.json").exists()


def test_every_cli_option_is_in_the_table():
    from dawin_fast.app.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    covered = {(c, opt) for c, args, _ in CLI
               for opt in (args if isinstance(args, dict) else
                           [a.split("=")[0] for a in args if a.startswith("--")])}
    for name, parser in commands.items():
        for action in parser._actions:
            for option in action.option_strings:
                if option in ("-h", "--help", "--debug"):
                    continue
                assert (name, option) in covered, f"dawin-fast {name} {option} has no entry"


# ---------------------------------------------------------------- the public functions

def _x(rows=6, k=8):
    return torch.randn(rows, k)


def _w(m=2, n=4, k=8):
    return torch.randn(m, n, k)


def _offsets(*values):
    return torch.tensor(values)


C2 = torch.tensor([[0.5, 0.5], [0.2, 0.8]])


def _classifier(num_models=2):
    visuals = [tiny_open_clip_visual(s) for s in range(num_models)]
    return DaWinClassifier(DaWinViT.from_open_clip(visuals),
                           [torch.randn(3, 12) for _ in range(num_models)])


_CACHE: dict[str, object] = {}


def classifier(num_models=2):
    key = f"clf{num_models}"
    if key not in _CACHE:
        _CACHE[key] = _classifier(num_models)
    return _CACHE[key]


def _routed_layer():
    layer = DaWinLinear(8, 4, 2)
    return layer(_x())


def _vit_pair(width2=32):
    return [tiny_open_clip_visual(0), tiny_open_clip_visual(1, width=width2)]


class _WithBatchNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(4)


LIBRARY = [
    # interp_linear: shapes, dtypes, values
    ("interp_linear x not a tensor", lambda: interp_linear([1.0], _w(), C2, _offsets(0, 3, 6)),
     TypeError, "interp_linear: x must be a torch.Tensor, got list"),
    ("interp_linear x int", lambda: interp_linear(torch.ones(6, 8, dtype=torch.int32), _w(), C2,
                                                  _offsets(0, 3, 6)),
     TypeError, "x must be float32, float16 or bfloat16"),
    ("interp_linear weight 2-D", lambda: interp_linear(_x(), torch.randn(4, 8), C2,
                                                       _offsets(0, 3, 6)),
     ValueError, "weight must be [M, N, K]"),
    ("interp_linear weight dtype", lambda: interp_linear(_x(), _w().double(), C2,
                                                         _offsets(0, 3, 6)),
     TypeError, "weight dtype torch.float64 != x dtype torch.float32"),
    ("interp_linear features", lambda: interp_linear(_x(k=5), _w(), C2, _offsets(0, 3, 6)),
     ValueError, "x has 5 features, weight expects K=8"),
    ("interp_linear bias shape", lambda: interp_linear(_x(), _w(), C2, _offsets(0, 3, 6),
                                                       torch.randn(4)),
     ValueError, "bias must be [M, N] = [2, 4], got (4,)"),
    ("interp_linear coeffs M", lambda: interp_linear(_x(), _w(), torch.ones(2, 3),
                                                     _offsets(0, 3, 6)),
     ValueError, "coeffs must be [G, M] with M=2, got (2, 3)"),
    ("interp_linear coeffs int", lambda: interp_linear(_x(), _w(), torch.ones(2, 2).long(),
                                                       _offsets(0, 3, 6)),
     TypeError, "coeffs must be floating point"),
    ("interp_linear offsets float", lambda: interp_linear(_x(), _w(), C2,
                                                          torch.tensor([0.0, 3.0, 6.0])),
     TypeError, "offsets must be int32 or int64"),
    ("interp_linear offsets length", lambda: interp_linear(_x(), _w(), C2, _offsets(0, 6)),
     ValueError, "offsets must be [G+1] = [3] for 2 coefficient rows"),
    ("interp_linear offsets start", lambda: interp_linear(_x(), _w(), C2, _offsets(1, 3, 6)),
     ValueError, "offsets must start at 0, got 1"),
    ("interp_linear offsets decrease", lambda: interp_linear(_x(), _w(), C2, _offsets(0, 4, 3)),
     ValueError, "offsets must be non-decreasing"),
    ("interp_linear offsets end", lambda: interp_linear(_x(), _w(), C2, _offsets(0, 3, 5)),
     ValueError, "offsets must end at the row count 6, got 5"),
    ("interp_linear coeffs NaN", lambda: interp_linear(_x(), _w(), C2 * float("nan"),
                                                       _offsets(0, 3, 6)),
     ValueError, "coeffs contain NaN or infinity"),
    # DaWinLinear
    ("DaWinLinear num_models", lambda: DaWinLinear(8, 4, 0), ValueError,
     "num_models must be >= 1, got 0"),
    ("DaWinLinear.from_linears empty", lambda: DaWinLinear.from_linears([]), ValueError,
     "need at least one nn.Linear"),
    ("DaWinLinear.from_linears type", lambda: DaWinLinear.from_linears([nn.Linear(8, 4),
                                                                        nn.Conv1d(8, 4, 1)]),
     TypeError, "item 1 is Conv1d, not nn.Linear"),
    ("DaWinLinear.from_linears shapes", lambda: DaWinLinear.from_linears([nn.Linear(8, 4),
                                                                          nn.Linear(8, 5)]),
     ValueError, "linear 1 differs from linear 0 in weight shape"),
    ("DaWinLinear offsets without coeffs", lambda: DaWinLinear(8, 4, 2)(_x(),
                                                                        offsets=_offsets(0, 6)),
     ValueError, "offsets given without coeffs"),
    ("DaWinLinear no routing", _routed_layer, RuntimeError,
     "needs coefficients: call it inside `with dawin_fast.route(coeffs, offsets):`"),
    ("DaWinLinear rows without offsets", lambda: DaWinLinear(8, 4, 2)(_x(), C2), ValueError,
     "offsets are required when coeffs has more than one row"),
    ("DaWinLinear.merged row", lambda: DaWinLinear(8, 4, 2).merged([1.0]), ValueError,
     "coeff_row must be [2]"),
    # route / Routing
    ("route coeffs int", lambda: Routing(torch.ones(1, 2).long()), TypeError,
     "route: coeffs must be a floating-point tensor"),
    ("route coeffs 3-D", lambda: Routing(torch.ones(1, 2, 2)), ValueError,
     "route: coeffs must be [G, M] or [M], got (1, 2, 2)"),
    ("route rows without offsets", lambda: Routing(C2), ValueError,
     "route: offsets are required when coeffs has more than one row"),
    ("route offsets length", lambda: Routing(C2, _offsets(0, 4)), ValueError,
     "route: offsets must be [G+1] = [3], got (2,)"),
    ("route offsets 2-D", lambda: Routing(C2, torch.zeros(3, 1).long()), ValueError,
     "route: offsets must be a 1-D integer tensor [G+1]"),
    ("route coeffs NaN", lambda: Routing(torch.tensor([float("nan"), 1.0])), ValueError,
     "route: coeffs contain NaN or infinity"),
    ("route offsets decrease", lambda: route(C2, _offsets(0, 4, 3)).__enter__(), ValueError,
     "offsets must be non-decreasing"),
    ("route layer name", lambda: Routing(torch.ones(2) / 2, layers={"": torch.ones(2)}),
     ValueError, "route: layer names must be non-empty strings"),
    ("route layer spec", lambda: Routing(torch.ones(2) / 2, layers={"fc1": [0.5, 0.5]}),
     TypeError, "route: layer 'fc1' needs a [G, M] / [M] tensor or a callable gate"),
    ("route layer table", lambda: Routing(torch.ones(2) / 2, layers={"fc1": torch.ones(3)}),
     ValueError, "route: layer 'fc1' coefficients must be floating point [G=1, M=2]"),
    ("route layer NaN", lambda: Routing(torch.ones(2) / 2,
                                        layers={"fc1": torch.tensor([float("nan"), 1.0])}),
     ValueError, "route: layer 'fc1' coefficients contain NaN or infinity"),
    ("route Routing plus offsets", lambda: route(Routing(torch.ones(2) / 2),
                                                 _offsets(0, 1)).__enter__(),
     ValueError, "route: pass offsets and layers to the Routing, not beside it"),
    # GroupedModel.forward (through a DaWinClassifier)
    ("forward coeffs M", lambda: classifier()(torch.randn(2, 3, 16, 16), torch.ones(3)),
     ValueError, "coeffs must be [M], [B, M] or [G, M] with M=2, got (3,)"),
    ("forward rows for batch", lambda: classifier()(torch.randn(4, 3, 16, 16), C2 + 0.1 * C2),
     ValueError, "coeffs has 2 rows for a batch of 4"),
    ("forward labels shape", lambda: classifier()(torch.randn(4, 3, 16, 16), C2,
                                                  labels=torch.zeros(3).long()),
     ValueError, "labels must be [B]=[4], got (3,)"),
    ("forward labels with a row", lambda: classifier()(torch.randn(4, 3, 16, 16),
                                                       torch.ones(2) / 2,
                                                       labels=torch.zeros(4).long()),
     ValueError, "with cluster_labels, coeffs must be the [G, M] table"),
    ("forward coeffs int", lambda: classifier()(torch.randn(2, 3, 16, 16),
                                                torch.ones(2).long()),
     TypeError, "coeffs must be a floating-point tensor"),
    ("DaWinViT image size", lambda: classifier()(torch.randn(2, 3, 32, 32), torch.ones(2) / 2),
     ValueError, "DaWinViT: images must be [B, C, H, W] = [B, 3, 16, 16], got [2, 3, 32, 32]"),
    # DaWin / DaWinMultiTask
    ("DaWin model type", lambda: DaWin(nn.Linear(2, 2)), TypeError,
     "DaWin: model must be a dawin_fast GroupedModel"),
    ("DaWin mode", lambda: DaWin(classifier(), mode="cluster"), ValueError,
     "mode must be 'mixture', 'per_sample', or a fixed coefficient"),
    ("DaWin expertise", lambda: DaWin(classifier(), expertise="vibes"), ValueError,
     "expertise must be one of"),
    ("DaWin temperatures count", lambda: DaWin(classifier(), temperatures=[1.0]), ValueError,
     "temperatures must be 2 positive numbers"),
    ("DaWin temperatures sign", lambda: DaWin(classifier(), temperatures=[1.0, -1.0]),
     ValueError, "temperatures must be 2 positive numbers"),
    ("DaWin n_clusters", lambda: DaWin(classifier(), n_clusters=0), ValueError,
     "n_clusters must be an int >= 1, got 0"),
    ("DaWin offset with 3 models", lambda: DaWin(classifier(3), offset_adjustment=True),
     ValueError, "offset_adjustment is defined for two models"),
    ("DaWin static NaN", lambda: DaWin(classifier(), mode=float("nan")), ValueError,
     "a fixed mode needs λ (two models) or 2 finite coefficients"),
    ("DaWin.predict tuple", lambda: DaWin(classifier()).predict((torch.randn(2, 3, 16, 16),)),
     TypeError, "DaWin.predict: images must be a tensor [B, ...], got tuple"),
    ("DaWin.calibrate empty", lambda: DaWin(classifier()).calibrate([]), ValueError,
     "DaWin.calibrate: no batches"),
    ("DaWin.calibrate batch", lambda: DaWin(classifier()).calibrate(["x"]), TypeError,
     "DaWin.calibrate: batch 0 is a str; expected an image tensor"),
    ("DaWin.calibrate few samples", lambda: DaWin(classifier(), n_clusters=5).calibrate(
        [torch.randn(3, 3, 16, 16)]), ValueError, "3 samples for 5 components"),
    ("DaWinMultiTask heads", lambda: DaWinMultiTask(classifier(3).encoder, [torch.randn(3, 12)]),
     ValueError, "an encoder of 3 stacked models needs 2 heads, got 1"),
    ("DaWinMultiTask mode", lambda: DaWinMultiTask(classifier(3).encoder,
                                                   [torch.randn(3, 12)] * 2, mode=0.5),
     ValueError, "mode must be 'mixture' or 'per_sample'"),
    ("DaWinMultiTask task", lambda: DaWinMultiTask(classifier(3).encoder,
                                                   [torch.randn(3, 12)] * 2).predict(
        torch.randn(2, 3, 16, 16), task=2), ValueError, "task must be in [0, 2), got 2"),
    ("DaWinMultiTask.calibrate empty", lambda: DaWinMultiTask(
        classifier(3).encoder, [torch.randn(3, 12)] * 2).calibrate([]), ValueError,
     "DaWinMultiTask.calibrate: no batches"),
    # mixtures
    ("BetaMixture components", lambda: BetaMixture(n_components=0), ValueError,
     "BetaMixture: n_components must be an integer >= 1"),
    ("BetaMixture range", lambda: BetaMixture(2).fit(torch.tensor([0.2, 1.5, 0.4])),
     ValueError, "BetaMixture: input must lie in [0, 1]"),
    ("BetaMixture NaN", lambda: BetaMixture(2).fit(torch.tensor([0.2, float("nan"), 0.4])),
     ValueError, "BetaMixture: input contains NaN or infinity"),
    ("BetaMixture samples", lambda: BetaMixture(3).fit(torch.tensor([0.2, 0.4])), ValueError,
     "BetaMixture: 2 samples for 3 components"),
    ("BetaMixture unfitted", lambda: BetaMixture(2).predict(torch.tensor([0.2])), RuntimeError,
     "BetaMixture: call fit() first"),
    ("DirichletMixture simplex", lambda: DirichletMixture(1).fit(torch.tensor([[0.2, 0.2],
                                                                             [0.5, 0.5]])),
     ValueError, "DirichletMixture: rows must sum to 1"),
    ("DirichletMixture D", lambda: DirichletMixture(1).fit(torch.ones(3, 1)), ValueError,
     "DirichletMixture: input must be [N, D] with D >= 2"),
    # coefficients
    ("coefficients_two model name", lambda: coefficients_two(torch.randn(3, 4),
                                                             torch.randn(3, 4), "ViT-Z"),
     ValueError, "coefficients_two: unknown model 'ViT-Z' for temperatures"),
    ("coefficients_two temperature", lambda: coefficients_two(torch.randn(3, 4),
                                                              torch.randn(3, 4), (1.0, 0.0)),
     ValueError, "temperature must be finite and > 0"),
    ("coefficients_two 1-D", lambda: coefficients_two(torch.randn(3), torch.randn(3)),
     ValueError, "coefficients_two: logits must be [B, C]"),
    ("coefficients_two batch", lambda: coefficients_two(torch.randn(3, 4), torch.randn(2, 4)),
     ValueError, "logits of both models must have the same batch size"),
    ("coefficients_two NaN", lambda: coefficients_two(torch.full((2, 3), float("nan")),
                                                      torch.randn(2, 3)),
     ValueError, "coefficients_two: logits contain NaN or infinity"),
    ("coefficients_two type", lambda: coefficients_two([[1.0]], torch.randn(1, 1)), TypeError,
     "coefficients_two: logits must be a torch tensor, got list"),
    ("coefficients_multi empty", lambda: coefficients_multi([]), ValueError,
     "coefficients_multi: logits must be a non-empty sequence"),
    ("coefficients_multi temperatures", lambda: coefficients_multi([torch.randn(2, 3)] * 2,
                                                                   temperatures=[1.0]),
     ValueError, "coefficients_multi: 1 temperatures for 2 models"),
    ("coefficients_multi scale", lambda: coefficients_multi([torch.randn(2, 3)] * 2,
                                                            scale=float("inf")),
     ValueError, "coefficients_multi: scale must be finite"),
    ("coefficients_multi batch", lambda: coefficients_multi([torch.randn(2, 3),
                                                             torch.randn(3, 3)]),
     ValueError, "every logits tensor must be [B, C_t] with the same B"),
    # grouping
    ("group_by_rows 1-D", lambda: group_by_rows(torch.ones(4)), ValueError,
     "group_by_rows: coeff_rows must be [*, M] with M >= 1, got (4,)"),
    ("group_by_rows NaN", lambda: group_by_rows(torch.full((2, 2), float("nan"))), ValueError,
     "group_by_rows: coeff_rows contain NaN or infinity"),
    ("group_by_labels float labels", lambda: group_by_labels(torch.zeros(3), C2), ValueError,
     "group_by_labels: labels must be an integer tensor"),
    ("group_by_labels range", lambda: group_by_labels(torch.tensor([0, 2]), C2), ValueError,
     "group_by_labels: labels must be in [0, 2)"),
    ("group_by_labels empty table", lambda: group_by_labels(torch.tensor([0]),
                                                            torch.ones(0, 2)),
     ValueError, "group_by_labels: component_coeffs needs at least one row"),
    # dawinize
    ("dawinize empty", lambda: dawinize([]), ValueError, "dawinize: need at least one model"),
    ("dawinize type", lambda: dawinize([nn.Linear(2, 2), "model"]), TypeError,
     "dawinize: item 1 is str, not an nn.Module"),
    ("dawinize BatchNorm", lambda: dawinize([_WithBatchNorm(), _WithBatchNorm()]), ValueError,
     "norm: layer type BatchNorm1d"),
    ("dawinize mismatch", lambda: dawinize([nn.Linear(2, 2), nn.Conv1d(2, 2, 1)]), ValueError,
     "Linear: model 1 is Conv1d, model 0 is Linear"),
    # DaWinViT, DaWinClassifier
    ("DaWinViT empty", lambda: DaWinViT.from_open_clip([]), ValueError,
     "DaWinViT: need at least one model"),
    ("DaWinViT type", lambda: DaWinViT.from_open_clip([nn.Linear(2, 2)]), TypeError,
     "DaWinViT: model 0 is Linear, not an open_clip VisionTransformer"),
    ("DaWinViT widths", lambda: DaWinViT.from_open_clip(_vit_pair(width2=48)), ValueError,
     "DaWinViT: 'class_embedding' differs: model 0 has (32,)"),
    ("DaWinClassifier head count", lambda: DaWinClassifier(classifier().encoder,
                                                           [torch.randn(3, 12)]),
     ValueError, "DaWinClassifier: 1 heads for an encoder of 2 models"),
    ("DaWinClassifier head type", lambda: DaWinClassifier(classifier().encoder,
                                                          [torch.randn(3, 12), "head"]),
     TypeError, "DaWinClassifier: head 1 must be an nn.Linear or a [C, D] tensor, got str"),
    ("DaWinClassifier feature size", lambda: DaWinClassifier(classifier().encoder,
                                                             [torch.randn(3, 12),
                                                              torch.randn(3, 768)]),
     ValueError, "DaWinClassifier: head 1 is [3, 768], but the encoder's features have 12 dims"),
    ("DaWinClassifier classes", lambda: DaWinClassifier(classifier().encoder,
                                                        [torch.randn(3, 12), nn.Linear(12, 4)]),
     ValueError, "DaWinClassifier: head 1 is [4, 12], head 0 is [3, 12]"),
]


@pytest.mark.parametrize("name, call, error, fragment", LIBRARY, ids=[c[0] for c in LIBRARY])
def test_library_errors(name, call, error, fragment):
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert fragment in message, message
    assert "\n" not in message.strip(), message
