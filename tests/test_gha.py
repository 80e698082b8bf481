"""GitHub Actions helpers: the matrix limit, outputs and annotations (pure)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf2oci import gha


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
