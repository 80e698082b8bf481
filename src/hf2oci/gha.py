"""GitHub Actions specifics: the matrix (with GitHub's 256-job limit), outputs, annotations,
the step summary, and the result files mirror jobs hand to the record job."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from hf2oci.errors import RecordError
from hf2oci.fsutil import atomic_write
from hf2oci.spec import Mirrored, RepoSpec

#: GitHub refuses a matrix of more jobs than this
MAX_MATRIX_JOBS = 256
RESULT_VERSION = 1


#: a repo at least this large gets a runner with its preinstalled toolchains removed first
LARGE_REPO_BYTES = 10 * 1024**3


def in_actions() -> bool:
    """Whether this process runs as a GitHub Actions step."""
    return os.environ.get("GITHUB_ACTIONS") == "true"


def matrix(
    entries: Sequence[Mapping[str, Any]],
    *,
    max_jobs: int = MAX_MATRIX_JOBS,
    batch_size: int = 1,
) -> dict[str, Any]:
    """``{"include": [...]}`` for ``fromJSON``: one job per ``batch_size`` entries, and never
    more than ``max_jobs`` jobs (larger batches past that).

    Each entry has ``name``, ``type``, ``lines`` (list lines, newline-joined) and ``large``; a
    batch joins the lines of several entries of one type (one ``hf2oci mirror`` takes one type)
    and is large when any of them is. Deterministic: same entries, same matrix.
    """
    if max_jobs < 1 or batch_size < 1:
        raise ValueError("max_jobs and batch_size must be at least 1")
    if not entries:
        return {"include": []}
    by_type: dict[str, list[Mapping[str, Any]]] = {}
    for e in entries:
        by_type.setdefault(str(e["type"]), []).append(e)
    types = sorted(by_type)
    # jobs per type: what batch_size asks for, then shrunk in proportion to fit max_jobs
    wanted = {t: -(-len(by_type[t]) // batch_size) for t in types}
    if batch_size == 1 and len(entries) <= max_jobs:
        return {"include": [dict(e) for e in entries]}
    budget = dict(wanted)
    if sum(wanted.values()) > max_jobs:
        total = len(entries)
        budget = {t: min(wanted[t], max(1, max_jobs * len(by_type[t]) // total)) for t in types}
        while sum(budget.values()) > max_jobs:
            biggest = max(types, key=lambda t: (budget[t], t))
            budget[biggest] -= 1
    jobs: list[dict[str, Any]] = []
    for t in types:
        items = by_type[t]
        per, extra = divmod(len(items), budget[t])
        start = 0
        for i in range(budget[t]):
            end = start + per + (1 if i < extra else 0)
            chunk = items[start:end]
            jobs.append(
                {
                    "name": str(chunk[0]["name"])
                    if len(chunk) == 1
                    else f"{t}s {start + 1}-{end} of {len(items)}",
                    "type": t,
                    "lines": "\n".join(str(e["lines"]) for e in chunk),
                    "large": any(bool(e.get("large")) for e in chunk),
                }
            )
            start = end
    return {"include": jobs}


def entry(spec: RepoSpec, line: str, *, size: int = 0) -> dict[str, Any]:
    """One matrix entry: the repo as a list line, and whether it needs a roomier runner."""
    return {
        "name": spec.label,
        "type": spec.repo_type,
        "lines": line,
        "large": size >= LARGE_REPO_BYTES,
    }


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
    """Append Markdown to ``path`` or ``$GITHUB_STEP_SUMMARY`` (nothing when neither is set)."""
    target = path or os.environ.get("GITHUB_STEP_SUMMARY")
    if target:
        with open(target, "a", encoding="utf-8") as f:
            f.write(markdown.rstrip("\n") + "\n")


def report_unplannable(failed: Sequence[tuple[str, str, str]], *, annotate: bool) -> None:
    """``(origin "file:line", repo id, reason)`` of repos the hub refuses now: an annotation on
    each list line (when ``annotate``) and a section of the run summary."""
    for origin, repo_id, reason in failed:
        path, _, line = origin.rpartition(":")
        if annotate:
            print(
                annotation(
                    f"{repo_id}: {reason}", file=path, line=int(line) if line.isdigit() else None
                ),
                flush=True,
            )
    if failed:
        append_summary(
            "### hf2oci plan: repos that cannot be mirrored now\n\n"
            + "\n".join(
                f"- ❌ `{origin or repo_id}`: {reason}" for origin, repo_id, reason in failed
            )
        )


# -- result files ---------------------------------------------------------------------------


def write_result(path: Path, outcomes: Sequence[Mapping[str, Any]]) -> None:
    doc = {"version": RESULT_VERSION, "outcomes": list(outcomes)}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")


def failed_outcome(message: str, *, origin: str) -> dict[str, Any]:
    """The outcome of a job that failed before any repo was tried (bad options, config)."""
    return {"status": "failed", "message": message, "origin": origin, "mirrored": None}


class Results(NamedTuple):
    mirrored: list[Mirrored]
    failed: list[dict[str, Any]]
    #: every outcome read, skipped ones (up to date by the time the job ran) included
    total: int


def read_results(*places: Path) -> Results:
    """Every result file given, or ``*.json`` under each folder given → successes, failures and
    the outcome count."""
    ok: list[Mirrored] = []
    failed: list[dict[str, Any]] = []
    total = 0
    paths: list[Path] = []
    for place in places:
        if place.is_dir():
            paths.extend(sorted(place.rglob("*.json")))
        elif place.is_file():
            paths.append(place)
        else:
            raise RecordError(f"{place}: no such result file or folder")
    for path in paths:
        try:
            doc = json.loads(path.read_text())
            if doc.get("version") != RESULT_VERSION:
                raise ValueError(f"unknown version {doc.get('version')!r}")
            for o in doc["outcomes"]:
                total += 1
                if o.get("status") == "failed":
                    failed.append(o)
                elif o.get("mirrored"):
                    ok.append(Mirrored.from_json(o["mirrored"], where=str(path)))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RecordError(f"{path}: not a hf2oci result file ({e})") from e
    return Results(ok, failed, total)
