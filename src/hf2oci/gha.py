"""GitHub Actions specifics: the matrix (with GitHub's 256-job limit), outputs, annotations,
the step summary, and the result files mirror jobs hand to the record job."""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hf2oci.errors import RecordError
from hf2oci.spec import Mirrored, RepoSpec

#: GitHub refuses a matrix of more jobs than this
MAX_MATRIX_JOBS = 256
RESULT_VERSION = 1


def matrix(
    entries: Sequence[Mapping[str, str]], *, max_jobs: int = MAX_MATRIX_JOBS
) -> dict[str, Any]:
    """``{"include": [...]}`` for ``fromJSON``: one job per entry, or batches past ``max_jobs``.

    Each entry has ``type`` and ``lines`` (list lines, newline-joined); a batch joins the lines
    of several entries of the same type. Deterministic: same entries, same matrix.
    """
    if max_jobs < 1:
        raise ValueError("max_jobs must be at least 1")
    by_type: dict[str, list[Mapping[str, str]]] = {}
    for e in entries:
        by_type.setdefault(e["type"], []).append(e)
    if len(entries) <= max_jobs:
        return {"include": [dict(e) for e in entries]}
    # share the jobs between types in proportion, at least one each
    jobs: list[dict[str, str]] = []
    types = sorted(by_type)
    budget = {t: max(1, max_jobs * len(by_type[t]) // len(entries)) for t in types}
    while sum(budget.values()) > max_jobs:
        biggest = max(types, key=lambda t: budget[t])
        budget[biggest] -= 1
    for t in types:
        items = by_type[t]
        n = min(budget[t], len(items))
        per, extra = divmod(len(items), n)
        start = 0
        for i in range(n):
            end = start + per + (1 if i < extra else 0)
            chunk = items[start:end]
            jobs.append(
                {
                    "name": f"{t}s {start + 1}-{end} of {len(items)}",
                    "type": t,
                    "lines": "\n".join(e["lines"] for e in chunk),
                }
            )
            start = end
    return {"include": jobs}


def entry(spec: RepoSpec, line: str) -> dict[str, str]:
    return {"name": spec.repo_id, "type": spec.repo_type, "lines": line}


def set_output(name: str, value: str, *, path: str | None = None) -> None:
    """Append ``name=value`` to ``$GITHUB_OUTPUT`` (heredoc form: values may span lines)."""
    target = path or os.environ.get("GITHUB_OUTPUT")
    if not target:
        return
    delimiter = f"ghadelim_{uuid.uuid4().hex}"
    with open(target, "a", encoding="utf-8") as f:
        f.write(f"{name}<<{delimiter}\n{value}\n{delimiter}\n")


def annotation(message: str, *, file: str | None = None, line: int | None = None) -> str:
    """An ``::error`` workflow command (GitHub shows it on the file and line)."""
    props = []
    if file:
        props.append(f"file={_escape_property(file)}")
    if line:
        props.append(f"line={line}")
    head = "::error " + ",".join(props) if props else "::error"
    return f"{head}::{_escape_data(message)}"


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def append_summary(markdown: str, *, path: str | None = None) -> None:
    target = path or os.environ.get("GITHUB_STEP_SUMMARY")
    if target:
        with open(target, "a", encoding="utf-8") as f:
            f.write(markdown.rstrip("\n") + "\n")


# -- result files ---------------------------------------------------------------------------


def write_result(path: Path, outcomes: Sequence[Mapping[str, Any]]) -> None:
    doc = {"version": RESULT_VERSION, "outcomes": list(outcomes)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def mirrored_json(m: Mirrored) -> dict[str, Any]:
    doc = dataclasses.asdict(m)
    doc["tags"] = list(m.tags)
    return doc


def read_results(folder: Path) -> tuple[list[Mirrored], list[dict[str, Any]]]:
    """Every ``*.json`` result under ``folder`` → (successes, failures)."""
    ok: list[Mirrored] = []
    failed: list[dict[str, Any]] = []
    if not folder.is_dir():
        raise RecordError(f"{folder}: no such folder of results")
    for path in sorted(folder.rglob("*.json")):
        try:
            doc = json.loads(path.read_text())
            if doc.get("version") != RESULT_VERSION:
                raise ValueError(f"unknown version {doc.get('version')!r}")
            for o in doc["outcomes"]:
                if o.get("status") == "failed":
                    failed.append(o)
                elif o.get("mirrored"):
                    m = dict(o["mirrored"])
                    m["tags"] = tuple(m["tags"])
                    ok.append(Mirrored(**m))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RecordError(f"{path}: not a hf2oci result file ({e})") from e
    return ok, failed
