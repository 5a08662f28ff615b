"""What --output / --plot may name, and how a report is replaced.

Each case fails first (``no_work``: before any model is built) with exit 2 and one line,
or checks that a replaced report keeps what the user set (mode, symlink).
"""

from __future__ import annotations

import errno
import os
import stat

import pytest

from dawin_fast.app import outputs
from dawin_fast.app.errors import UserError
from tests.app.cli_files import eval_args, make_files, run_error

pytestmark = pytest.mark.usefixtures("torch_backend")  # tests/conftest.py


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_files(tmp_path_factory.mktemp("outputs"))


@pytest.mark.parametrize("option", ["--output", "--plot"])
def test_device_node_and_pipe_are_refused(files, tmp_path, capsys, no_work, option):
    """As root, os.replace onto /dev/null would turn the device into a regular file."""
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    for path in ("/dev/null", str(fifo)):
        argv = eval_args(files, **{"--output": str(tmp_path / "r.json"), option: path})
        run_error(argv, capsys, option, path, "not a regular file")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


@pytest.mark.parametrize("name, fragment", [("", "empty file name"),
                                            ("newdir/", "names a directory"),
                                            ("x" * 300 + ".json", "file name is 305 bytes")])
def test_bad_names_fail_up_front(files, tmp_path, capsys, no_work, name, fragment):
    path = name if not name else f"{tmp_path}/{name}"  # pathlib would drop the slash
    run_error(eval_args(files, **{"--output": path}), capsys, "--output", fragment,
              no_files_in=tmp_path)


def test_a_file_in_place_of_the_directory_is_named(tmp_path, capsys, no_work):
    (tmp_path / "report.json").write_text("a file")
    run_error(["demo", "--output", str(tmp_path / "report.json" / "r.json")], capsys,
              "--output", f"{tmp_path / 'report.json'} is not a directory")


def test_demo_refuses_a_missing_directory_with_a_trailing_slash(tmp_path, capsys, no_work):
    run_error(["demo", "--output", str(tmp_path / "newdir") + "/"], capsys, "--output",
              "names a directory", no_files_in=tmp_path)


def test_a_250_character_name_is_written(tmp_path):
    path = str(tmp_path / ("r" * 245 + ".json"))
    assert outputs.check_writable(path, "--output") == path
    assert outputs.write_text(path, "new") is False
    assert open(path).read() == "new"
    assert os.listdir(tmp_path) == [os.path.basename(path)]


def test_a_replaced_report_keeps_its_mode(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    os.chmod(target, 0o444)
    assert outputs.write_text(str(target), "new") is True
    assert target.read_text() == "new"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o444
    os.chmod(target, 0o640)
    outputs.write_text(str(target), "newer")
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640


def test_a_new_report_gets_the_umask_mode(tmp_path):
    mask = os.umask(0o022)
    try:
        outputs.write_text(str(tmp_path / "r.json"), "new")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(os.stat(tmp_path / "r.json").st_mode) == 0o644


def test_a_symlinked_report_is_written_at_its_target(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "report.json"
    target.write_text("old")
    link = tmp_path / "report.json"
    link.symlink_to(target)
    assert outputs.check_writable(str(link), "--output") == str(link)
    outputs.write_text(str(link), "new")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "new"
    assert sorted(os.listdir(tmp_path / "real")) == ["report.json"]
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "real" / "new.json")
    outputs.write_text(str(dangling), "fresh")
    assert dangling.is_symlink() and (tmp_path / "real" / "new.json").read_text() == "fresh"


def test_disk_full_names_the_path(tmp_path, monkeypatch):
    """A failed write leaves the previous file intact, no temporary file, and a one-line
    UserError (exit 2) naming the path."""
    target = tmp_path / "report.json"
    target.write_text("previous")
    real_replace = os.replace

    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(outputs.os, "replace", full)
    with pytest.raises(UserError, match=f"cannot write {target}: No space left on device"):
        outputs.write_text(str(target), "new")
    monkeypatch.setattr(outputs.os, "replace", real_replace)
    assert target.read_text() == "previous"
    assert sorted(os.listdir(tmp_path)) == ["report.json"]


def test_disk_full_in_the_command_is_exit_2(tmp_path, capsys, monkeypatch):
    from dawin_fast.app import cli

    monkeypatch.setattr("dawin_fast.bench.layers.run", lambda *a, **k: [])
    monkeypatch.setattr("dawin_fast.bench.layers.render_markdown", lambda *a, **k: "table")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(outputs.os, "replace", full)
    output = tmp_path / "b.md"
    assert cli.main(["bench", "--output", str(output)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"cannot write {output}" in err, err
    assert "No space left on device" in err


# ------------------------------------------------------------ checkpoint key names


def _arch(files):
    from dawin_fast.app.checkpoints import inspect_arch, register_model_config

    return inspect_arch(register_model_config(str(files / "tiny-test-vit.json")))


def test_key_messages_name_keys_as_the_file_has_them(files, tmp_path):
    """A full CLIP file's keys are 'visual.*': the message says so (it said 'conv1.weight')."""
    import torch

    from dawin_fast.app.checkpoints import CheckpointError, check_checkpoint

    arch = _arch(files)
    state = torch.load(files / "zs.pt", weights_only=True)
    del state["visual.conv1.weight"]
    torch.save(state, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="missing key 'visual.conv1.weight' for"):
        check_checkpoint(str(tmp_path / "missing.pt"), arch)
    visual_only = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    visual_only["extra.weight"] = torch.zeros(1)
    visual_only["conv1.weight"] = torch.zeros(1)
    torch.save(visual_only, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match="key 'conv1.weight' has shape"):
        check_checkpoint(str(tmp_path / "extra.pt"), arch)


def test_a_ddp_checkpoint_is_recognised(files, tmp_path):
    """DistributedDataParallel saves 'module.'-prefixed keys (torch.compile '_orig_mod.'):
    stripped, and the same weights load; messages keep the prefix."""
    import torch

    from dawin_fast.app.checkpoints import CheckpointError, check_checkpoint, load_visuals

    arch = _arch(files)
    state = torch.load(files / "zs.pt", weights_only=True)
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pt")
    torch.save({f"_orig_mod.module.{k}": v for k, v in state.items()},
               tmp_path / "compiled.pt")
    for name in ("ddp.pt", "compiled.pt"):
        check_checkpoint(str(tmp_path / name), arch)
    ddp, plain = load_visuals(arch.name, [str(tmp_path / "ddp.pt"), str(files / "zs.pt")])
    for (key, a), (_, b) in zip(ddp.state_dict().items(), plain.state_dict().items(),
                                strict=True):
        assert torch.equal(a, b), key
    del state["visual.proj"]
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp_missing.pt")
    with pytest.raises(CheckpointError, match="missing key 'module.visual.proj'"):
        check_checkpoint(str(tmp_path / "ddp_missing.pt"), arch)
    state = torch.load(files / "zs.pt", weights_only=True)
    torch.save({f"wrapper.{k}": v for k, v in state.items()}, tmp_path / "wrapped.pt")
    with pytest.raises(CheckpointError, match="its keys start with 'wrapper.visual.'"):
        check_checkpoint(str(tmp_path / "wrapped.pt"), arch)


# ------------------------------------------------------------------------ extreme data


def test_huge_pixels_are_named_before_any_work(files, tmp_path, capsys, no_work):
    """Data x 1e20: finite, but the model's logits overflow (it was an internal error
    about logits, exit 1)."""
    import torch

    data = torch.load(files / "data.pt", weights_only=True)
    torch.save({"images": data["images"] * 1e20, "labels": data["labels"]},
               tmp_path / "huge.pt")
    run_error(eval_args(files, **{"--data": str(tmp_path / "huge.pt"),
                                  "--output": str(tmp_path / "r.json")}), capsys,
              f"dataset {tmp_path / 'huge.pt'}: pixel values reach", "expected images "
              "normalised")


def test_non_finite_logits_during_the_run_are_a_user_error(files):
    """The safety net behind the up-front check (say float16 overflowing on sane data):
    a UserError naming the data, not an internal error."""
    import torch

    from dawin_fast.app.cli import build_parser
    from dawin_fast.app.eval_command import build_classifier, prepare_eval
    from dawin_fast.app.evaluate import EvalConfig, evaluate

    plan = prepare_eval(build_parser().parse_args(eval_args(files, **{
        "--data": str(files / "data.pt"), "--output": str(files / "out" / "x.json")})))
    classifier = build_classifier(plan, "cpu")
    images = torch.randn(4, 3, 16, 16) * 1e20
    with pytest.raises(UserError, match="data.pt: the models' logits are NaN or infinite on "
                                        "4 image"):
        evaluate(classifier, [(images, torch.zeros(4, dtype=torch.long))],
                 EvalConfig(n_clusters=2), source=f"dataset {files / 'data.pt'}")


def test_a_ddp_saved_head_is_recognised(files, tmp_path):
    import torch

    from dawin_fast.app.checkpoints import inspect_head, load_head

    head = torch.load(files / "head_ft.pt", weights_only=True)
    torch.save({f"module.{k}": v for k, v in head.items()}, tmp_path / "head.pt")
    assert inspect_head(str(tmp_path / "head.pt")).shape == tuple(head["weight"].shape)
    assert torch.equal(load_head(str(tmp_path / "head.pt")).weight, head["weight"])
