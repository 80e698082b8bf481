"""GitHub Actions helpers: the matrix limit, outputs and annotations (pure)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf2oci import gha
from hf2oci.errors import RecordError
from hf2oci.spec import Mirrored, RepoSpec


def _entries(n: int, kind: str = "model") -> list[dict[str, str]]:
    return [{"name": f"org/m{i}", "type": kind, "lines": f"org/m{i}"} for i in range(n)]


def test_small_plans_get_one_job_per_repo() -> None:
    m = gha.matrix(_entries(3))
    assert json.loads(json.dumps(m)) == {"include": _entries(3)}


@pytest.mark.parametrize(("models", "datasets"), [(600, 0), (500, 100), (257, 1), (1000, 999)])
def test_large_plans_are_batched_under_the_limit(models: int, datasets: int) -> None:
    entries = _entries(models) + [
        {"name": f"org/d{i}", "type": "dataset", "lines": f"org/d{i}"} for i in range(datasets)
    ]
    m = gha.matrix(entries)
    jobs = m["include"]
    assert len(jobs) <= gha.MAX_MATRIX_JOBS
    lines = [(j["type"], line) for j in jobs for line in j["lines"].split("\n")]
    assert sorted(lines) == sorted((e["type"], e["lines"]) for e in entries)  # each exactly once
    assert gha.matrix(entries) == m  # deterministic
    assert json.loads(json.dumps(m)) == m  # valid for fromJSON


def test_outputs_and_annotations(tmp_path: Path) -> None:
    out = tmp_path / "out"
    gha.set_output("matrix", '{"include": []}', path=str(out))
    gha.set_output("multi", "a\nb", path=str(out))
    text = out.read_text().splitlines()
    assert text[0].startswith("matrix<<") and text[1] == '{"include": []}'
    assert text[4:6] == ["a", "b"]
    note = gha.annotation("bad: 100%\nline", file="get_hf/a,b.txt", line=8)
    assert note == "::error file=get_hf/a%2Cb.txt,line=8::bad: 100%25%0Aline"


def test_six_hundred_repos_fit_the_limit_each_line_once_deterministically() -> None:
    entries = _entries(600)
    m = gha.matrix(entries)
    assert 1 < len(m["include"]) <= gha.MAX_MATRIX_JOBS
    lines = [line for job in m["include"] for line in job["lines"].split("\n")]
    assert sorted(lines) == sorted(e["lines"] for e in entries)
    assert len(lines) == len(set(lines)) == 600
    assert json.dumps(gha.matrix(list(entries))) == json.dumps(m)
    assert set(json.loads(json.dumps(m))) == {"include"}


def test_batch_size_groups_repos_of_one_type_per_job() -> None:
    dataset = {"name": "org/d", "type": "dataset", "lines": "org/d", "large": True}
    entries = [*_entries(5), dataset]
    jobs = gha.matrix(entries, batch_size=2)["include"]
    assert [(j["type"], j["lines"].count("\n") + 1) for j in jobs] == [
        ("dataset", 1),
        ("model", 2),
        ("model", 2),
        ("model", 1),
    ]
    assert jobs[0]["large"] is True and not any(j["large"] for j in jobs[1:])
    assert jobs[0]["name"] == "org/d" and jobs[1]["name"] == "models 1-2 of 5"
    assert gha.matrix([], batch_size=3) == {"include": []}
    with pytest.raises(ValueError):
        gha.matrix(entries, batch_size=0)


def test_large_repos_are_flagged_for_a_roomier_runner() -> None:
    spec = RepoSpec(repo_id="org/big", repo_type="dataset")
    assert gha.entry(spec, "org/big", size=gha.LARGE_REPO_BYTES)["large"] is True
    assert gha.entry(spec, "org/big", size=1)["large"] is False
    assert gha.entry(spec, "org/big")["name"] == "dataset org/big"


def test_annotations_only_in_actions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    assert gha.in_actions()
    monkeypatch.delenv("GITHUB_ACTIONS")
    assert not gha.in_actions()


def test_result_files_round_trip_and_bad_ones_are_refused(tmp_path: Path) -> None:
    m = Mirrored(
        repo_id="org/m",
        repo_type="model",
        revision="a" * 40,
        requested_revision="main",
        image="127.0.0.1:5000/ns/hf",
        tags=("org--m--aaaaaaaaaaaa", "org--m"),
        digest="sha256:" + "b" * 64,
        size=3,
        file_count=1,
        mirrored_at="2026-11-23T00:00:00Z",
    )
    ok = {"status": "mirrored", "mirrored": m.to_json()}
    gha.write_result(tmp_path / "r" / "a" / "0.json", [ok])
    gha.write_result(tmp_path / "r" / "1.json", [gha.failed_outcome("boom", origin="x:1")])
    gha.write_result(tmp_path / "r" / "3.json", [{"status": "skipped", "mirrored": None}])
    got, failed, total = gha.read_results(tmp_path / "r")
    assert got == [m] and total == 3  # a skipped outcome is a result too (not "missing")
    assert failed == [{"status": "failed", "message": "boom", "origin": "x:1", "mirrored": None}]
    (tmp_path / "r" / "2.json").write_text('{"version": 99, "outcomes": []}')
    with pytest.raises(RecordError, match=r"2\.json: not a hf2oci result file"):
        gha.read_results(tmp_path / "r")
    with pytest.raises(RecordError, match="no such result file or folder"):
        gha.read_results(tmp_path / "nowhere")
