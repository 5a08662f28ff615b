"""The first-contact stage against a fake device with three bad kernels (CPU only).

The fake device (``first_contact.FakeDevice``, chosen by ``first_contact.FAKE_ENV``)
replaces the work of each item and nothing else: the real driver starts real children,
which write start/done records, poll for their first launches and exit on a CUDA error or
a hang. One kernel raises a CUDA error, one never finishes its first launch, one returns
wrong values. The stage must still write a record for every other item, switch Gluon off
for the benchmarks, and finish within its budget.
"""

from __future__ import annotations

import json

from benchmarks import first_contact, gpu_session

BUDGET_S = 120.0


def _spec() -> dict:
    def item(case, kernel, method=None):
        return dict(case=case, kernel=kernel, method=method)

    return dict(
        launch_deadline_s=1.0, hang_s=3600.0,
        faults={"rowscaled": "raise", "swapab (Gluon)": "hang", "epilogue": "wrong"},
        items=dict(
            ceiling=[item("device copy", "copy"), item("GEMM", "cublas")],
            numerics=[item("combine-a", "combine", "fused_combine"),
                      item("epilogue-a", "epilogue", "fused_epilogue"),
                      item("rowscaled-a", "rowscaled", "fused_rowscaled"),
                      item("rowscaled-b", "rowscaled", "fused_rowscaled"),
                      item("combine-b", "combine", "fused_combine"),
                      item("swapab-g1", "swapab (Gluon)", "fused_swapab"),
                      item("swapab-g2", "swapab (Gluon)", "fused_swapab"),
                      item("wstat-g1", "wstat (Gluon)", "fused_wstat")],
            layer=[item("L1", "combine", "fused"), item("L1", "premerged", "premerged"),
                   item("L1", "rowscaled", "fused_rowscaled")],
            e2e=[item("e2e", "e2e plain_forward", "plain_forward"),
                 item("e2e", "e2e wise_ft", "wise_ft")]))


def test_bad_kernels_cost_their_own_records_only(tmp_path, monkeypatch):
    spec = tmp_path / "fake.json"
    spec.write_text(json.dumps(_spec()))
    monkeypatch.setenv(first_contact.FAKE_ENV, str(spec))
    # The self-check of a CLI that lacks it: recorded as failed, and the stage goes on.
    monkeypatch.setattr(gpu_session, "SELFCHECK", [
        "-c", "import sys; print('dawin-fast: error: invalid choice: selfcheck'); sys.exit(2)"])
    out = tmp_path / "out"
    code = gpu_session.main(["first-contact", "--out", str(out), "--budget", str(BUDGET_S)])
    assert code == 1  # failures happened, and the exit code says so
    data = json.loads((out / "first-contact.json").read_text())
    assert data["seconds"] <= BUDGET_S, data["seconds"]
    assert data["selfcheck"]["returncode"] == 2 and not data["selfcheck"]["passed"]
    assert "invalid choice" in data["selfcheck"]["output_tail"]
    records = data["records"]

    def final(case, kind=None, method=None):
        """The record that ends a case: the last one that is neither start, done nor fault."""
        found = [r for r in records if r.get("case") == case
                 and r.get("kind") not in ("start", "done", "fault", "cache")
                 and (kind is None or r.get("kind") == kind)
                 and (method is None or r.get("method") == method)]
        assert found, (case, kind, method)
        return found[-1]

    for case in ("combine-a", "combine-b", "wstat-g1"):  # the good kernels, around the bad
        assert final(case, "numerics")["passed"] and final(case, "repeat")["passed"], case
    assert final("wstat-g1", "smoke")["passed"]
    wrong = final("epilogue-a", "numerics")
    assert wrong["passed"] is False and wrong["max_err_over_bound"] > 1
    raised = final("rowscaled-a", "numerics")
    assert raised["passed"] is False and "CUDA error" in raised["error"], raised
    assert "kernel rowscaled excluded" in final("rowscaled-b", "numerics")["skipped"]
    hung = final("swapab-g1", "smoke")
    assert hung["passed"] is False and "hang" in hung["error"], hung
    assert "kernel swapab (Gluon) excluded" in final("swapab-g2", "numerics")["skipped"]
    # The hang cost its deadline, not the part: the child ended itself, it was not killed.
    runs = {r["label"]: r for r in data["runs"]}
    assert runs["gluon"]["returncode"] == first_contact.HANG_EXIT
    assert not runs["gluon"]["timed_out"]
    assert runs["numerics"]["returncode"] == first_contact.CUDA_ERROR_EXIT
    assert runs["numerics-2"]["returncode"] == 0 and runs["gluon-2"]["returncode"] == 0
    # Gluon off for the benchmarks; every other record still written.
    assert data["gluon_decision"]["flag"] == "0"
    assert "swapab-g1" in data["gluon_decision"]["not_passed"]
    assert final("L1", method="fused")["median_ms"] == 1.0
    assert final("L1", method="premerged")["median_ms"] == 1.0
    assert "excluded" in final("L1", method="fused_rowscaled")["skipped"]
    assert {final("e2e", method=m)["ms_per_image"] for m in ("plain_forward", "wise_ft")} == {1.0}
    assert {final(c, "ceiling")["median_ms"] for c in ("device copy", "GEMM")} == {1.0}
    results = (out / "RESULTS.md").read_text()
    assert "DAWIN_FAST_GLUON for the benchmarks: 0" in results
    assert "Excluded after a failure: rowscaled (CUDA error in rowscaled-a)" in results


def test_a_clean_gluon_child_keeps_gluon_on(tmp_path, monkeypatch):
    spec = _spec()
    spec["faults"] = {}
    spec["items"] = dict(numerics=[dict(case="swapab-g1", kernel="swapab (Gluon)"),
                                   dict(case="combine-a", kernel="combine")])
    path = tmp_path / "fake.json"
    path.write_text(json.dumps(spec))
    monkeypatch.setenv(first_contact.FAKE_ENV, str(path))
    monkeypatch.setattr(gpu_session, "SELFCHECK", ["-c", "import sys; sys.exit(0)"])
    assert gpu_session.main(["first-contact", "--out", str(tmp_path / "o"),
                             "--budget", str(BUDGET_S)]) == 0
    data = json.loads((tmp_path / "o" / "first-contact.json").read_text())
    assert data["gluon_decision"]["flag"] == "1", data["gluon_decision"]
    assert data["selfcheck"]["passed"]
