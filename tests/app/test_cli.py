"""The dawin-fast command end to end, on tiny inputs this test makes itself."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

from dawin_fast import use_backend
from dawin_fast.app.cli import main
from tests.models import perturb


@pytest.fixture(autouse=True)
def torch_backend():
    """The commands' logic on the PyTorch path: the interpreter would take minutes here."""
    with use_backend("torch"):
        yield


ARCH = "tiny-test-vit"
CONFIG = {
    "embed_dim": 12,
    "vision_cfg": {"image_size": 16, "layers": 2, "width": 32, "patch_size": 4,
                   "head_width": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A model config, two checkpoints (full CLIP .pt, visual-only .safetensors), two heads,
    an ImageFolder and a tensor dataset."""
    import open_clip
    from PIL import Image
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("cli")
    config = root / f"{ARCH}.json"
    config.write_text(json.dumps(CONFIG))
    open_clip.add_model_config(str(config))
    torch.manual_seed(0)
    zero_shot = open_clip.create_model(ARCH, pretrained=None)
    fine_tuned = open_clip.create_model(ARCH, pretrained=None)
    fine_tuned.load_state_dict(zero_shot.state_dict())
    perturb(fine_tuned.visual, seed=1)
    torch.save(zero_shot.state_dict(), root / "zs.pt")
    save_file({k: v.contiguous() for k, v in fine_tuned.visual.state_dict().items()},
              str(root / "ft.safetensors"))
    gen = torch.Generator().manual_seed(0)
    torch.save(torch.randn(3, 12, generator=gen) * 5, root / "head_zs.pt")
    torch.save({"weight": torch.randn(3, 12, generator=gen) * 5,
                "bias": torch.zeros(3)}, root / "head_ft.pt")
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog", "eel"):
        (root / "images" / cls).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "images" / cls / f"{i}.png")
    torch.save({"images": torch.randn(10, 3, 16, 16, generator=gen),
                "labels": torch.randint(0, 3, (10,), generator=gen)}, root / "data.pt")
    (root / "empty").mkdir()
    return root


def eval_args(files, **overrides):
    args = {
        "--arch": ARCH, "--model-config": str(files / f"{ARCH}.json"),
        "--checkpoints": [str(files / "zs.pt"), str(files / "ft.safetensors")],
        "--heads": [str(files / "head_zs.pt"), str(files / "head_ft.pt")],
        "--data": str(files / "images"), "--workers": "0", "--batch-size": "4",
        "--clusters": "2", "--output": str(files / "report.json"),
    }
    args.update(overrides)
    argv = ["eval"]
    for key, value in args.items():
        if value is None:
            continue
        argv.append(key)
        argv.extend(value if isinstance(value, list) else [value])
    return argv


@pytest.mark.parametrize("data", ["images", "data.pt"])
def test_eval_writes_a_report(files, data, capsys):
    assert main(eval_args(files, **{"--data": str(files / data)})) == 0
    report = json.loads((files / "report.json").read_text())
    n = 9 if data == "images" else 10
    assert report["n"] == n
    methods = report["methods"]
    assert set(methods) == {"model 0", "model 1", "WiSE-FT (λ=0.5)", "output ensemble",
                            "classifier selection", "DaWin per-sample", "DaWin mixture"}
    for result in methods.values():
        assert result["n"] == n and 0 <= result["correct"] <= n
        assert result["accuracy"] == pytest.approx(result["correct"] / n)
    assert "DaWin mixture" in capsys.readouterr().out


def test_eval_per_batch_and_offset_options(files):
    argv = eval_args(files, **{"--data": str(files / "data.pt")})
    argv += ["--per-batch", "--offset-adjustment", "--temperatures", "ViT-B-32",
             "--wise-lambda", "0.3"]
    assert main(argv) == 0
    report = json.loads((files / "report.json").read_text())
    assert "WiSE-FT (λ=0.3)" in report["methods"]
    assert report["config"]["calibrated"] is False


def run_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_eval_errors(files, tmp_path, capsys):
    err = run_error(eval_args(files, **{"--data": str(files / "missing")}), capsys)
    assert "dataset not found" in err
    err = run_error(eval_args(files, **{"--data": str(files / "empty")}), capsys)
    assert "Couldn't find any class folder" in err
    empty = tmp_path / "empty.pt"
    torch.save({"images": torch.zeros(0, 3, 16, 16), "labels": torch.zeros(0)}, empty)
    assert "is empty" in run_error(eval_args(files, **{"--data": str(empty)}), capsys)
    err = run_error(eval_args(files, **{"--arch": "no-such-model", "--model-config": None}),
                    capsys)
    assert "unknown architecture 'no-such-model'" in err
    err = run_error(eval_args(files, **{"--heads": [str(files / "head_zs.pt")]}), capsys)
    assert "2 checkpoints but 1 heads" in err
    err = run_error(eval_args(files, **{"--checkpoints": [str(files / "zs.pt")] * 1,
                                        "--heads": [str(files / "head_zs.pt")]}), capsys)
    assert "at least two checkpoints" in err


def test_eval_rejects_mismatched_checkpoint(files, tmp_path, capsys):
    state = torch.load(files / "zs.pt", weights_only=True)
    state["visual.conv1.weight"] = torch.zeros(8, 3, 4, 4)  # another width
    torch.save(state, tmp_path / "bad.pt")
    err = run_error(eval_args(files, **{"--checkpoints": [str(files / "zs.pt"),
                                                          str(tmp_path / "bad.pt")]}), capsys)
    assert "key 'conv1.weight' has shape (8, 3, 4, 4)" in err
    del state["visual.conv1.weight"]
    torch.save(state, tmp_path / "missing.pt")
    err = run_error(eval_args(files, **{"--checkpoints": [str(files / "zs.pt"),
                                                          str(tmp_path / "missing.pt")]}), capsys)
    assert "missing key 'conv1.weight'" in err


class _Exploit:
    """A pickle that would create a file when unpickled without weights_only."""

    def __init__(self, flag):
        self.flag = flag

    def __reduce__(self):
        return (open, (self.flag, "w"))


def test_loading_refuses_arbitrary_pickles(files, tmp_path, capsys):
    flag = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"visual.conv1.weight": _Exploit(str(flag))}, f)
    err = run_error(eval_args(files, **{"--checkpoints": [str(files / "zs.pt"), str(path)]}),
                    capsys)
    assert "refusing to unpickle arbitrary objects" in err
    assert not flag.exists()
    torch.save({"visual": [1, 2, 3]}, tmp_path / "notdict.pt")
    err = run_error(eval_args(files, **{"--checkpoints": [str(files / "zs.pt"),
                                                          str(tmp_path / "notdict.pt")]}), capsys)
    assert "not a plain state dict" in err
    err = run_error(eval_args(files, **{"--heads": [str(files / "head_zs.pt"), str(path)]}),
                    capsys)
    assert "refusing" in err and not flag.exists()


def test_demo_runs_and_saves_plot_and_report(tmp_path, capsys):
    plot, report = tmp_path / "demo.png", tmp_path / "demo.json"
    assert main(["demo", "--plot", str(plot), "--output", str(report), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for method in ("model 0 (general)", "model 1 (fine-tuned)", "WiSE-FT", "output ensemble",
                   "DaWin per-sample", "DaWin mixture"):
        assert method in out
    data = json.loads(report.read_text())
    sets = data["sets"]
    assert set(sets) == {"in-distribution", "shifted"}
    for results in sets.values():
        assert results["DaWin mixture"]["n"] == 899
    assert plot.stat().st_size > 10_000
    # The setup is meant to give the interpolation a trade-off to resolve.
    assert (sets["in-distribution"]["model 1"]["accuracy"]
            > sets["in-distribution"]["model 0"]["accuracy"])
    assert sets["shifted"]["model 1"]["accuracy"] < sets["shifted"]["model 0"]["accuracy"]


def test_demo_rejects_cuda_without_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    err = run_error(["demo", "--device", "cuda"], capsys)
    assert "CUDA is not available" in err


def test_bench_and_selfcheck(tmp_path, capsys):
    output = tmp_path / "bench.md"
    assert main(["bench", "--output", str(output)]) == 0
    table = output.read_text()
    assert "Device:" in table and "| fused |" in table and "premerged_cublas" in table
    assert main(["bench", "--output", str(output), "--filter", "fc2-per_sample",
                 "--methods", "materialize_loop"]) == 0
    table = output.read_text()
    assert table.count("### ") == 1 and "| materialize_loop |" in table
    assert "| premerged_cublas |" not in table
    capsys.readouterr()  # drop the progress bars
    assert "no benchmark case" in run_error(["bench", "--filter", "nothing"], capsys)
    assert "unknown methods" in run_error(["bench", "--methods", "magic"], capsys)
    assert main(["bench", "--e2e", "--output", str(output), "--methods", "plain_forward",
                 "dawin_mixture"]) == 0
    table = output.read_text()
    assert "| plain_forward |" in table and "| dawin_mixture |" in table
    assert main(["selfcheck"]) == 0
    assert "all checks passed" in capsys.readouterr().out


def test_usage_errors_exit_with_argparse_code(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        main(["demo", "--temperatures", "hot"])
    assert os.environ.get("TRITON_INTERPRET") in (None, "0", "1")
