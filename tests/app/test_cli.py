"""The dawin-fast command end to end, on tiny inputs this test makes itself.

Besides the happy paths, one test per user mistake the command must catch: each checks the
exit code, that stderr is one line naming the culprit, that nothing was written, and
(``no_work``) that the mistake was caught before any model was built or trained.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from dawin_fast.app.cli import build_parser, main
from tests.app.cli_files import ARCH, FEATURES, eval_args, make_files, run_error, save_png

pytestmark = pytest.mark.usefixtures("torch_backend")  # tests/conftest.py


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_files(tmp_path_factory.mktemp("cli"))


def out(tmp_path, name="report.json") -> str:
    return str(tmp_path / name)


# ---------------------------------------------------------------------- happy paths


@pytest.mark.parametrize("data", ["images", "data.pt"])
def test_eval_writes_a_report(files, data, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    argv = eval_args(files, **{"--data": str(files / data), "--output": str(report_path)})
    assert main(argv) == 0
    report = json.loads(report_path.read_text())
    n = 9 if data == "images" else 10
    (name, detail), = report["results"].items()
    assert name == data and detail["n"] == n and detail["classes"] == 3
    methods = detail["methods"]
    assert set(methods) == {"model 0", "model 1", "WiSE-FT (λ=0.5)", "output ensemble",
                            "classifier selection", "DaWin per-sample", "DaWin mixture"}
    for result in methods.values():
        assert result["n"] == n and 0 <= result["correct"] <= n
        assert result["accuracy"] == pytest.approx(result["correct"] / n)
    captured = capsys.readouterr()
    assert "DaWin (no mixture)" in captured.out and f"wrote {report_path}" in captured.out
    assert captured.err == ""
    assert sorted(os.listdir(tmp_path)) == ["report.json"]  # no temporary file left


def test_eval_per_batch_and_offset_options(files, tmp_path, capsys):
    argv = eval_args(files, **{"--data": str(files / "data.pt"), "--output": out(tmp_path)})
    argv += ["--per-batch", "--offset-adjustment", "--temperatures", "ViT-B-32",
             "--wise-lambda", "0.3"]
    assert main(argv) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert "WiSE-FT (λ=0.3)" in report["results"]["data.pt"]["methods"]
    assert report["config"]["calibrated"] is False
    # 10 images in batches of 4: the last batch (2 images, K = 2) runs per-sample, said so.
    assert report["results"]["data.pt"]["mixture_per_sample_batches"] == 1
    assert "data.pt: 1 batch(es) held no more images than --clusters 2" in capsys.readouterr().out


def test_eval_says_when_it_replaces_the_report(files, tmp_path, capsys):
    """An existing report at --output is replaced, and the command says so."""
    report = tmp_path / "report.json"
    report.write_text("an earlier report")
    argv = eval_args(files, **{"--data": str(files / "data.pt"), "--output": str(report)})
    assert main(argv) == 0
    assert f"replaced {report}" in capsys.readouterr().out
    assert json.loads(report.read_text())["results"]["data.pt"]["n"] == 10
    assert "(default: dawin_report.json)" in _help("eval")


def test_eval_plot(files, tmp_path):
    """eval writes the results figure to --plot."""
    plot = tmp_path / "eval.png"
    argv = eval_args(files, **{"--data": str(files / "data.pt"), "--output": out(tmp_path),
                               "--plot": str(plot)})
    assert main(argv) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


def test_demo_runs_and_saves_plot_and_report(tmp_path, capsys, monkeypatch):
    """The demo end to end on the fast path (--epochs 1,1: seconds, not a minute), with
    its progress bars (asked for, as on a terminal) on stderr, apart from the table."""
    monkeypatch.setenv("DAWIN_FAST_PROGRESS", "1")
    plot, report = tmp_path / "demo.png", tmp_path / "demo.json"
    assert main(["demo", "--epochs", "1,1", "--plot", str(plot), "--output", str(report),
                 "--device", "cpu"]) == 0
    out_text, err_text = capsys.readouterr()
    for bar in ("training the general model", "fine-tuning it on clean digits",
                "expert pass"):
        assert bar in err_text
    assert "\r" not in out_text and "it/s" not in out_text and "epoch" not in out_text
    for method in ("model 0 (general)", "model 1 (fine-tuned)", "WiSE-FT", "output ensemble",
                   "DaWin per-sample", "DaWin mixture"):
        assert method in out_text
    data = json.loads(report.read_text())
    assert data["config"]["epochs"] == [1, 1]
    sets = data["sets"]
    assert set(sets) == {"in-distribution", "shifted"}
    for results in sets.values():
        assert results["DaWin mixture"]["n"] == 899
    assert plot.stat().st_size > 10_000
    assert sorted(os.listdir(tmp_path)) == ["demo.json", "demo.png"]


def test_bench_and_selfcheck(tmp_path, capsys):
    output = tmp_path / "bench.md"
    assert main(["bench", "--output", str(output)]) == 0
    table = output.read_text()
    assert "Device:" in table and "| fused |" in table and "| premerged |" in table
    assert main(["bench", "--output", str(output), "--filter", "fc2-per_sample",
                 "--methods", "materialize_loop"]) == 0
    table = output.read_text()
    assert table.count("### ") == 1 and "| materialize_loop |" in table
    assert "| premerged |" not in table
    capsys.readouterr()
    assert main(["bench", "--e2e", "--output", str(output), "--methods", "plain_forward",
                 "dawin_mixture"]) == 0
    table = output.read_text()
    assert "| plain_forward |" in table and "| dawin_mixture |" in table
    assert main(["selfcheck"]) == 0
    assert "all checks passed" in capsys.readouterr().out


# ------------------------------------------------------ 15.1 a finished run thrown away


@pytest.mark.parametrize("option, path, fragment", [
    ("--output", "missing/report.json", "does not exist"),
    ("--plot", "missing/plot.png", "does not exist"),
    ("--output", ".", "is a directory"),
    ("--plot", "plot.unknownformat", "expected a file name ending in one of"),
])
def test_eval_unwritable_outputs_fail_first(files, tmp_path, capsys, no_work, option, path,
                                            fragment):
    argv = eval_args(files, **{"--output": out(tmp_path), option: str(tmp_path / path)})
    run_error(argv, capsys, option, fragment, no_files_in=tmp_path)


@pytest.mark.parametrize("option", ["--plot", "--output"])
def test_demo_unwritable_outputs_fail_first(tmp_path, capsys, no_work, option):
    name = "d.png" if option == "--plot" else "d.json"
    run_error(["demo", option, str(tmp_path / "nodir" / name)], capsys, option,
              "does not exist", no_files_in=tmp_path)


def test_output_may_not_overwrite_an_input(files, tmp_path, capsys, no_work):
    run_error(eval_args(files, **{"--output": str(files / "head_zs.pt")}), capsys,
              "--output", "would overwrite the --heads file")


def test_bench_unwritable_output_fails_first(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("dawin_fast.bench.layers.run", lambda *a, **k: pytest.fail("ran"))
    run_error(["bench", "--output", str(tmp_path / "no" / "b.md")], capsys, "--output",
              "does not exist", no_files_in=tmp_path)


def test_writes_are_atomic(tmp_path, monkeypatch):
    """A failure while writing leaves the previous file intact and no temporary file."""
    from dawin_fast.app import outputs

    target = tmp_path / "report.json"
    target.write_text("previous")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(outputs.os, "replace", broken_replace)
    with pytest.raises(ValueError, match=f"cannot write {target}: disk full"):
        outputs.write_text(str(target), "new")
    assert target.read_text() == "previous"
    assert sorted(os.listdir(tmp_path)) == ["report.json"]


# ----------------------------------------------------------------- 15.2 bad data


def test_corrupt_image_is_named_before_any_work(files, tmp_path, capsys, no_work):
    folder = tmp_path / "images"
    for cls in ("cat", "dog", "eel"):
        (folder / cls).mkdir(parents=True)
        save_png(folder / cls / "0.png")
    bad = folder / "dog" / "1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    run_error(eval_args(files, **{"--data": str(folder), "--output": out(tmp_path)}), capsys,
              f"image {bad}", "not a readable image", no_files_in=tmp_path)


def test_undecodable_image_aborts_with_its_path(files, tmp_path, capsys):
    """A truncated JPEG passes PIL's verify() (headers only) and fails when decoded: the
    run stops with its path, from inside a DataLoader worker too, and writes nothing."""
    from PIL import Image

    folder = tmp_path / "images"
    for cls in ("cat", "dog", "eel"):
        (folder / cls).mkdir(parents=True)
        save_png(folder / cls / "0.png")
    jpeg = folder / "eel" / "1.jpg"
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(jpeg, quality=95)
    data = jpeg.read_bytes()
    jpeg.write_bytes(data[: len(data) // 2])
    with Image.open(jpeg) as image:
        image.verify()  # passes: the header is whole
    report = tmp_path / "out" / "report.json"
    report.parent.mkdir()
    for workers in ("0", "1"):
        argv = eval_args(files, **{"--data": str(folder), "--output": str(report),
                                   "--workers": workers})
        run_error(argv, capsys, f"image {jpeg}", "cannot be decoded",
                  no_files_in=report.parent)


def test_tensor_images_at_the_wrong_resolution(files, tmp_path, capsys, no_work):
    data = tmp_path / "data.pt"
    torch.save({"images": torch.randn(4, 3, 32, 32), "labels": torch.zeros(4, dtype=torch.long)},
               data)
    run_error(eval_args(files, **{"--data": str(data), "--output": out(tmp_path)}), capsys,
              f"dataset {data}", "[4, 3, 32, 32]", f"{ARCH} expects [N, 3, 16, 16]",
              no_files_in=tmp_path)


# ----------------------------------------------------------- 15.3 class counts


def test_heads_and_folder_class_counts_must_match(files, tmp_path, capsys, no_work):
    folder = tmp_path / "images"
    for cls in ("cat", "dog", "eel", "fox"):
        (folder / cls).mkdir(parents=True)
        save_png(folder / cls / "0.png")
    run_error(eval_args(files, **{"--data": str(folder), "--output": out(tmp_path)}), capsys,
              f"dataset {folder}", "4 class folders", "heads score 3 classes",
              no_files_in=tmp_path)


def test_tensor_labels_beyond_the_heads_classes(files, tmp_path, capsys, no_work):
    data = tmp_path / "data.pt"
    torch.save({"images": torch.randn(4, 3, 16, 16), "labels": torch.tensor([0, 1, 2, 3])},
               data)
    run_error(eval_args(files, **{"--data": str(data), "--output": out(tmp_path)}), capsys,
              f"dataset {data}", "labels span [0, 3]", "heads score 3 classes",
              no_files_in=tmp_path)


# -------------------------------------------------- 15.4 head errors name the head


def test_head_feature_size_is_checked_against_the_model(files, tmp_path, capsys, no_work):
    head = tmp_path / "wide_head.pt"
    torch.save(torch.randn(3, 768), head)
    run_error(eval_args(files, **{"--heads": [str(files / "head_zs.pt"), str(head)],
                                  "--output": out(tmp_path)}), capsys,
              f"head {head}", "[3, 768]", f"{ARCH} has {FEATURES} features",
              f"expected [C, {FEATURES}]", no_files_in=tmp_path)


def test_heads_must_score_the_same_classes(files, tmp_path, capsys, no_work):
    head = tmp_path / "four_classes.pt"
    torch.save({"weight": torch.randn(4, FEATURES), "bias": torch.zeros(4)}, head)
    run_error(eval_args(files, **{"--heads": [str(files / "head_zs.pt"), str(head)],
                                  "--output": out(tmp_path)}), capsys,
              f"head {head}", "4 classes", "has 3", no_files_in=tmp_path)


# ------------------------------------------------ 15.5 validation before anything loads


@pytest.mark.parametrize("option, value, fragment", [
    ("--clusters", "0", "expected an integer >= 1, got '0'"),
    ("--temperatures", "inf,1", "expected comma-separated numbers > 0"),
    ("--temperatures", "1,1,1", "3 values for 2 models"),
    ("--wise-lambda", "nan", "expected a number in [0, 1], got 'nan'"),
    ("--batch-size", "0", "expected an integer >= 1"),
    ("--workers", "-1", "expected an integer >= 0"),
])
def test_eval_arguments_fail_before_loading(files, tmp_path, capsys, no_work, option, value,
                                            fragment):
    run_error(eval_args(files, **{option: value, "--output": out(tmp_path)}), capsys,
              option, fragment, no_files_in=tmp_path)


@pytest.mark.parametrize("argv, fragment", [
    (["--clusters", "0"], "expected an integer >= 1"),
    (["--clusters", "899"], "needs more images than clusters"),
    (["--temperatures", "1,2,3"], "the demo has 2 models"),
    (["--epochs", "0,3"], "expected two integers >= 1"),
])
def test_demo_arguments_fail_before_training(tmp_path, capsys, no_work, argv, fragment):
    run_error(["demo", *argv], capsys, argv[0], fragment, no_files_in=tmp_path)


@pytest.mark.parametrize("per_batch", [True, False])
def test_too_many_clusters_is_an_error_in_both_modes(files, tmp_path, capsys, no_work,
                                                     per_batch):
    """More clusters than images is an error before any work in both modes (per batch it
    would otherwise fall back to per-sample silently), and the line says why."""
    argv = eval_args(files, **{"--clusters": "100", "--per-batch": per_batch,
                               "--output": out(tmp_path)})
    run_error(argv, capsys, "--clusters 100", "needs more images than clusters",
              no_files_in=tmp_path)


# --------------------------------------------------------- 15.6 errors that mislead


def _bad_checkpoints(tmp_path, files):
    ok = (files / "zs.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(ok[: len(ok) // 2])
    (tmp_path / "folder.pt").mkdir()
    save_png(tmp_path / "image.pt")
    st = (files / "ft.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(st[: len(st) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    with open(tmp_path / "cut.pkl", "wb") as f:
        f.write(pickle.dumps({"a": list(range(100))}, protocol=2)[:50])
    return {
        "truncated.pt": "truncated or corrupt PyTorch file",
        "folder.pt": "is a directory",
        "image.pt": "a PNG image; expected a .pt",
        "truncated.safetensors": "not a valid safetensors file",
        "empty.pt": "is empty",
        "cut.pkl": "truncated pickle",
    }


def test_checkpoint_errors_say_what_the_file_is(files, tmp_path, capsys, no_work):
    (tmp_path / "in").mkdir()
    cases = _bad_checkpoints(tmp_path / "in", files)
    for name, fragment in cases.items():
        path = str(tmp_path / "in" / name)
        err = run_error(eval_args(files, **{"--checkpoints": [str(files / "zs.pt"), path],
                                            "--output": out(tmp_path)}),
                        capsys, f"checkpoint {path}", fragment, no_files_in=tmp_path)
        assert "refusing" not in err and "unpickle" not in err
        err = run_error(eval_args(files, **{"--heads": [str(files / "head_zs.pt"), path],
                                            "--output": out(tmp_path)}),
                        capsys, f"head {path}", fragment, no_files_in=tmp_path)
        assert "refusing" not in err


class _Exploit:
    """A pickle that would create a file when unpickled without weights_only."""

    def __init__(self, flag):
        self.flag = flag

    def __reduce__(self):
        return (open, (self.flag, "w"))


@pytest.mark.parametrize("save", ["pickle", "torch.save"])
def test_code_pickles_are_refused_without_torchs_advice(files, tmp_path, capsys, no_work,
                                                        save):
    flag = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"visual.conv1.weight": _Exploit(str(flag))}
    if save == "pickle":
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    else:
        torch.save(payload, path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for option, good in (("--checkpoints", "zs.pt"), ("--heads", "head_zs.pt")):
            err = run_error(eval_args(files, **{option: [str(files / good), str(path)],
                                                "--output": out(tmp_path, "r.json")}),
                            capsys, str(path), "refusing to unpickle arbitrary objects", "open",
                            no_files_in=tmp_path)
            assert "weights_only" not in err
    assert not flag.exists()
    assert not [w for w in caught if "pickle protocol" in str(w.message)]  # 15.7


def test_eval_rejects_mismatched_checkpoint(files, tmp_path, capsys, no_work):
    state = torch.load(files / "zs.pt", weights_only=True)
    state["visual.conv1.weight"] = torch.zeros(8, 3, 4, 4)  # another width
    torch.save(state, tmp_path / "bad.pt")
    run_error(eval_args(files, **{"--checkpoints": [str(files / "zs.pt"),
                                                    str(tmp_path / "bad.pt")]}), capsys,
              "key 'visual.conv1.weight' has shape (8, 3, 4, 4)")
    del state["visual.conv1.weight"]
    torch.save(state, tmp_path / "missing.pt")
    run_error(eval_args(files, **{"--checkpoints": [str(files / "zs.pt"),
                                                    str(tmp_path / "missing.pt")]}), capsys,
              "missing key 'visual.conv1.weight'")
    torch.save({"visual": [1, 2, 3]}, tmp_path / "notdict.pt")
    run_error(eval_args(files, **{"--checkpoints": [str(files / "zs.pt"),
                                                    str(tmp_path / "notdict.pt")]}), capsys,
              "not a plain state dict")


def test_checkpoint_with_nan_weights_is_named(files, tmp_path, capsys):
    state = torch.load(files / "zs.pt", weights_only=True)
    state["visual.proj"] = torch.full_like(state["visual.proj"], float("nan"))
    torch.save(state, tmp_path / "nan.pt")
    run_error(eval_args(files, **{"--checkpoints": [str(files / "zs.pt"),
                                                    str(tmp_path / "nan.pt")],
                                  "--output": out(tmp_path)}), capsys,
              f"checkpoint {tmp_path / 'nan.pt'}", "'visual.proj' contains NaN or infinity",
              no_files_in=tmp_path)


@pytest.mark.parametrize("command", ["demo", "eval"])
@pytest.mark.parametrize("device, fragment", [
    ("tpu", "expected cpu, cuda or cuda:N, got 'tpu'"),
    ("cuda:banana", "expected cpu, cuda or cuda:N"),
])
def test_unknown_devices(files, tmp_path, capsys, no_work, command, device, fragment):
    argv = (eval_args(files, **{"--output": out(tmp_path)}) if command == "eval"
            else ["demo"]) + ["--device", device]
    run_error(argv, capsys, "--device", fragment, no_files_in=tmp_path)


def test_demo_rejects_cuda_without_gpu(capsys, no_work):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    run_error(["demo", "--device", "cuda"], capsys, "--device", "CUDA is not available")


# ------------------------------------------------------------------ 15.7 noise


def test_eval_prints_no_warnings(files, tmp_path, capsys, caplog):
    """open_clip's "No pretrained weights loaded" (logged twice, just before the user's
    weights loaded) is gone; so is every other warning of a normal run."""
    caplog.set_level(logging.INFO)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        argv = eval_args(files, **{"--data": str(files / "data.pt"), "--output": out(tmp_path)})
        assert main(argv) == 0
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [str(w.message) for w in caught]
    assert capsys.readouterr().err == ""


def test_protocol_4_files_are_explained(files, tmp_path, capsys, no_work):
    """torch.save(..., pickle_protocol=4) writes files torch's safe loader cannot read."""
    head = tmp_path / "head_p4.pt"
    torch.save(torch.randn(3, FEATURES), head, pickle_protocol=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        err = run_error(eval_args(files, **{"--heads": [str(files / "head_zs.pt"), str(head)],
                                            "--output": out(tmp_path, "r.json")}), capsys,
                        f"head {head}", "pickle protocol 4", no_files_in=tmp_path)
    assert "refusing" not in err
    assert not [w for w in caught if "pickle protocol" in str(w.message)]


# ------------------------------------------------------------ 15.9 CLI conventions


def _subparser(name: str):
    return build_parser()._subparsers._group_actions[0].choices[name]


def _help(name: str) -> str:
    return " ".join(_subparser(name).format_help().split())


def test_version(capsys):
    from dawin_fast import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"dawin-fast {__version__}"


def test_python_m_dawin_fast():
    result = subprocess.run([sys.executable, "-m", "dawin_fast", "--version"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("dawin-fast "), result.stderr


def test_eval_help_documents_every_option():
    eval_parser = _subparser("eval")
    text = _help("eval")
    for action in eval_parser._actions:
        assert action.help, f"{action.option_strings} has no help text"
        if action.default not in (None, False, argparse.SUPPRESS) \
                and action.option_strings != ["-h", "--help"]:
            assert f"(default: {action.default})" in text, action.dest
    for shown in ("(default: 3)", "(default: 0.5)", "(default: 256)", "(default: 2)",
                  "(default: float32)", "(default: dawin_report.json)", "(default: 1 for each)"):
        assert shown in text


def test_top_level_help_is_plain_and_lists_commands_once():
    text = build_parser().format_help()
    assert "``" not in text
    for command in ("demo", "eval", "bench", "selfcheck"):
        assert len([line for line in text.splitlines()
                    if line.split()[:1] == [command]]) == 1, text
    assert "Exit codes" in text


def test_bench_method_that_cannot_run_here_says_why(capsys, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    monkeypatch.setattr("dawin_fast.bench.layers.run", lambda *a, **k: pytest.fail("ran"))
    run_error(["bench", "--methods", "einsum_grouped_mm"], capsys,
              "--methods einsum_grouped_mm", "cannot run here", "no GPU")


def test_bench_notes_what_it_does_not_time_and_labels_cpu_columns(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    output = tmp_path / "bench.md"
    assert main(["bench", "--filter", "fc2-one_group", "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "note: not timing einsum_grouped_mm" in printed
    table = output.read_text()
    assert "cublas" not in table.lower()
    assert "× premerged" in table


def test_bench_argument_errors(capsys):
    run_error(["bench", "--filter", "nothing"], capsys, "--filter nothing", "no benchmark case")
    run_error(["bench", "--methods", "magic"], capsys, "--methods", "invalid choice: 'magic'")
    run_error(["bench", "--methods", "plain_forward"], capsys, "--methods plain_forward",
              "an --e2e method")
    run_error(["bench", "--e2e", "--methods", "fused"], capsys, "--methods fused",
              "a layer method")


def test_usage_errors_are_one_line_with_code_2(capsys):
    run_error(["eval"], capsys, "the following arguments are required: --arch")
    run_error(["demo", "--temperatures", "hot"], capsys, "--temperatures", "got 'hot'")
    run_error([], capsys, "required: COMMAND")


# --------------------------------------------------------------- internal errors


def test_internal_errors_are_one_line_unless_debug(capsys, monkeypatch):
    def crash(args):
        raise RuntimeError("something broke\nwith a second line")

    from dawin_fast.app.cli import COMMANDS

    monkeypatch.setitem(COMMANDS, "selfcheck", crash)
    err = run_error(["selfcheck"], capsys, "internal error: RuntimeError: something broke",
                    "--debug", code=1)
    assert "second line" not in err
    with pytest.raises(RuntimeError, match="something broke"):
        main(["selfcheck", "--debug"])
    with pytest.raises(RuntimeError, match="something broke"):
        main(["--debug", "selfcheck"])
    monkeypatch.setenv("DAWIN_FAST_DEBUG", "1")
    with pytest.raises(RuntimeError, match="something broke"):
        main(["selfcheck"])
