"""The GPU-session driver (``benchmarks/gpu_session.py``), tested on the CPU.

* The dry run: every stage at toy sizes, with the files each stage must leave in $OUT
  (at most 8 per device call, names the device tool returns).
* The P1-P6 verdicts and the renderer on SYNTHETIC records: made-up numbers, labelled as
  such, that exist only inside these tests and never reach benchmarks/RESULTS.md.
* A run past its limit, a stage that crashes, a benchmark past the stage's deadline: each
  still writes what it had, and says what happened.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_session, render
from dawin_fast.bench import targets

ROOT = Path(__file__).resolve().parents[1]
RETURNED_NAME = re.compile(r"^[A-Za-z0-9._-]+$")  # what the device tool brings back
SYNTHETIC = "SYNTHETIC (made-up numbers, test only)"


def stage_files(out: Path, stage: str) -> list[str]:
    return sorted(p.name for p in out.iterdir()
                  if p.name.startswith((f"{stage}.", f"{stage}-")))


def test_dry_run_writes_every_stage(tmp_path, capsys):
    assert gpu_session.main(["dry-run", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for stage in gpu_session.DRY_RUN_STAGES:
        files = stage_files(tmp_path, stage)
        assert {f"{stage}.json", f"{stage}.log", f"{stage}.md"} <= set(files), files
        assert len(files) <= 8 and all(RETURNED_NAME.match(f) for f in files), files
        data = json.loads((tmp_path / f"{stage}.json").read_text())
        assert data["status"] == "ok", (stage, data["errors"])
        assert data["env"]["date"] and data["driver"].startswith("python -m benchmarks")
        assert f"--- {stage}: ok" in printed
    correctness = json.loads((tmp_path / "correctness.json").read_text())
    assert [r["label"] for r in correctness["runs"]] == list(gpu_session.DRY_CORRECTNESS)
    for run in correctness["runs"]:
        assert run["returncode"] == 0 and run["tests"] >= 1, run
        assert (tmp_path / f"correctness-{run['label']}.xml").exists()
    assert correctness["env"]["torch"] and correctness["env"]["device"]
    layers = json.loads((tmp_path / "layers.json").read_text())
    by_method = {r["method"]: r for r in layers["records"]}
    assert by_method["fused"]["median_ms"] > 0
    assert by_method["fused"]["kernel"].startswith("torch:")
    assert by_method["fused"]["rel_err"] < 1e-4 and by_method["fused"]["repeats"] >= 10
    assert "GPU" in by_method["fused_swapab"]["skipped"]
    e2e = json.loads((tmp_path / "e2e.json").read_text())
    assert {r.get("method") for r in e2e["records"]} >= set(gpu_session_e2e_methods())
    results = (tmp_path / "RESULTS.md").read_text()
    assert "## Targets (DESIGN §5, P1-P6)" in results and "CPU run (toy sizes)" in results
    assert all(f"| P{i} |" in results for i in range(1, 7))
    assert "### toy-fc2-per_sample-M2-8x5" in results and "| merged_forward_k3 |" in results


def gpu_session_e2e_methods():
    from dawin_fast.bench import e2e

    return e2e.METHODS


# ------------------------------------------------------------------- synthetic verdicts


def synthetic_layer(case, target, times, **extra):
    """SYNTHETIC layer records: made-up times for the renderer's logic, never measured."""
    info = dict(case=case, target=target, model="SYNTHETIC", layer="fc1", pattern="one_group",
                rows=12800, images=256, tokens=50, in_features=768, out_features=3072,
                num_models=2, dtype="bfloat16", device="cuda", **extra)
    return [dict(info, method=m, median_ms=ms, kernel="swapab:w8t256 (Gluon)"
                 if m == "fused" else None) for m, ms in times.items()]


def synthetic_e2e(times_per_image, extra_bytes, bound=4 * 2**20):
    """SYNTHETIC end-to-end records (made-up numbers)."""
    return [dict(case="e2e-SYNTHETIC", method=m, images=1024, ms_per_image=ms,
                 median_ms=ms * 1024, peak_extra_bytes=extra_bytes.get(m),
                 layer_weight_bytes=bound) for m, ms in times_per_image.items()]


def synthetic_records():
    layer = []
    # P1: a case within 1.15x that beats compile; one within 1.15x but slower than compile.
    layer += synthetic_layer("S-P1-a", "P1", dict(fused=1.10, premerged=1.0,
                                                  materialize_compiled=1.2, fused_swapab=1.1,
                                                  fused_epilogue=2.0))
    layer += synthetic_layer("S-P1-b", "P1", dict(fused=1.12, premerged=1.0,
                                                  materialize_compiled=1.05))
    # P2: 1.9x cuBLAS and 25x faster than the loop: met.
    layer += synthetic_layer("S-P2", "P2", dict(fused=1.9, premerged=1.0,
                                                materialize_loop=47.5))
    # P3: no premerged time: incomplete.
    layer += synthetic_layer("S-P3", "P3", dict(fused=0.012))
    # P4: 1.6x: not met.
    layer += synthetic_layer("S-P4", "P4", dict(fused=1.6, premerged=1.0))
    e2e = synthetic_e2e(dict(plain_forward=1.0, dawin_mixture=3.0, dawin_per_sample=4.5,
                             rebuild_per_sample=900.0, merged_forward_k3=1.2,
                             merged_forward_per_sample=1.3),
                        dict(plain_forward=100 * 2**20, merged_forward_k3=103 * 2**20,
                             merged_forward_per_sample=110 * 2**20))
    return layer, e2e


def test_target_verdicts_on_synthetic_records():
    layer, e2e = synthetic_records()
    verdicts = {v.target: v for v in targets.evaluate(layer, e2e)}
    assert verdicts["P1"].status == targets.NOT_MET  # S-P1-b loses to torch.compile
    p1 = {c.case: c for c in verdicts["P1"].cases}
    assert p1["S-P1-a"].status == targets.MET and p1["S-P1-b"].status == targets.NOT_MET
    assert p1["S-P1-a"].values["best strategy / premerged"] == "swapab 1.10x"
    assert verdicts["P1"].measured.startswith("worst 1.12x (S-P1-b)")
    assert verdicts["P2"].status == targets.MET
    assert verdicts["P2"].cases[0].values["loop / fused"] == "25.00x"
    assert verdicts["P3"].status == targets.INCOMPLETE
    assert verdicts["P4"].status == targets.NOT_MET
    p5 = {c.case: c.status for c in verdicts["P5"].cases}
    assert p5 == {"dawin_mixture / plain_forward": targets.MET,
                  "dawin_per_sample / plain_forward": targets.NOT_MET,  # 4.5 > 4
                  "rebuild_per_sample / dawin_per_sample": targets.MET}  # 200x
    assert verdicts["P5"].status == targets.NOT_MET
    p6 = {c.case: c.status for c in verdicts["P6"].cases if c.status != "(not judged)"}
    assert p6 == {"merged_forward_k3": targets.MET,  # 3 MiB over plain <= 4 MiB
                  "merged_forward_per_sample": targets.NOT_MET}  # 10 MiB > 4 MiB
    # Nothing measured at all: every target incomplete, never met.
    assert {v.status for v in targets.evaluate([], [])} == {targets.INCOMPLETE}


def test_render_builds_the_p1_p6_table_from_a_synthetic_stage_file(tmp_path):
    layer, e2e = synthetic_records()
    env = dict(device=SYNTHETIC, torch="0", triton="0", date="2000-01-01", gluon="1")
    paths = []
    for name, records in (("layers", layer), ("e2e", e2e)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(dict(stage=name, env=env, records=records,
                                        driver=f"python -m benchmarks.gpu_session {name}",
                                        commands=[f"SYNTHETIC {name} command"])))
        paths.append(str(path))
    text = render.render(paths)
    assert f"Device: {SYNTHETIC}" in text
    assert "- `python -m benchmarks.gpu_session layers`" in text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines()
            if line.startswith("| P")}
    assert set(rows) == {f"P{i}" for i in range(1, 7)}
    for target, status in (("P1", "not met"), ("P2", "met"), ("P3", "incomplete"),
                           ("P4", "not met"), ("P5", "not met"), ("P6", "not met")):
        assert rows[target].rstrip().endswith(f"**{status}** |"), rows[target]
    assert "### S-P1-a" in text and "| merged_forward_per_sample |" in text
    # The command-line entry point writes the same text.
    out = tmp_path / "RESULTS.md"
    assert render.main([*paths, "--output", str(out)]) == 0
    assert out.read_text() == text


def test_results_md_holds_no_synthetic_numbers():
    assert "SYNTHETIC" not in (ROOT / "benchmarks" / "RESULTS.md").read_text()


# ------------------------------------------------------------------- never silently


def make_stage(tmp_path, name="probe", budget=60.0):
    args = gpu_session.parse_args([name if name in gpu_session.STAGES else "render",
                                   "--out", str(tmp_path)])
    return gpu_session.Stage(name, tmp_path, budget, args)


def test_a_run_past_its_limit_is_interrupted_and_recorded(tmp_path):
    stage = make_stage(tmp_path)
    script = ("import time\nprint('started', flush=True)\ntry:\n    time.sleep(60)\n"
              "except KeyboardInterrupt:\n    print('interrupted: writing files', flush=True)\n"
              "    raise SystemExit(2)\n")
    record = stage.run("sleeper", [sys.executable, "-c", script], dict(os.environ), timeout=3)
    assert record["timed_out"] and record["returncode"] == 2 and record["seconds"] < 30
    log = (tmp_path / "probe.log").read_text()
    assert "started" in log and "interrupted: writing files" in log and "SIGINT" in log
    assert stage.finish() == 1
    data = json.loads((tmp_path / "probe.json").read_text())
    assert data["status"] == "failed" and data["runs"][0]["timed_out"]


def test_a_crashing_stage_records_its_traceback(tmp_path, monkeypatch):
    def broken(stage):
        stage.say("half way")
        raise RuntimeError("SYNTHETIC failure")

    monkeypatch.setitem(gpu_session.RUNNERS, "render", broken)
    args = gpu_session.parse_args(["render", "--out", str(tmp_path)])
    assert gpu_session.run_stage("render", args, 60.0) == 1
    data = json.loads((tmp_path / "render.json").read_text())
    assert data["status"] == "crashed" and "RuntimeError: SYNTHETIC failure" in data["errors"][0]
    assert "half way" in (tmp_path / "render.log").read_text()


def test_benchmarks_past_the_deadline_are_skipped_and_recorded(tmp_path):
    records = tmp_path / "records.jsonl"
    env = dict(gpu_session.child_env(gluon=False), DAWIN_BENCH_DEADLINE="0",
               DAWIN_BENCH_RECORDS=str(records))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "benchmarks/test_bench_interp_linear.py", "-k",
                           "toy-qkv-one_group and (fused or premerged)"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:]
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    assert len(lines) >= 2 and all(r["outcome"] == "skipped" for r in lines)
    assert all("DAWIN_BENCH_DEADLINE" in r["skipped"] for r in lines)
    assert {r["method"] for r in lines} >= {"fused", "premerged"}
    assert all(r["case"] == "toy-qkv-one_group-M2-8x5" for r in lines)


@pytest.mark.parametrize("stage", ["layers", "compiled", "e2e"])
def test_selections_are_what_the_runbook_says(stage):
    args = gpu_session.parse_args([stage, "--filter", "ViT-B-32"])
    if stage == "layers":
        assert gpu_session._select(gpu_session.LAYER_SELECT, "x", args) == \
            "not materialize_compiled and (ViT-B-32)"
    if stage == "compiled":
        assert gpu_session._select(gpu_session.COMPILED_SELECT, "x", args) == \
            "materialize_compiled and one_group and M2 and not 8x50 and (ViT-B-32)"
    assert args.gluon and args.budget == gpu_session.DEFAULT_BUDGET_S
