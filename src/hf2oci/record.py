"""The record stage: the ledger (``get_hf/mirrored.json``), models.md / datasets.md, git commits."""

from __future__ import annotations

import configparser
import contextlib
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

import git
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from hf2oci.errors import RecordError
from hf2oci.fsutil import atomic_write
from hf2oci.naming import hub_url
from hf2oci.render import render
from hf2oci.spec import REPO_TYPES, Mirrored, RepoType
from hf2oci.units import human_size

log = logging.getLogger(__name__)

LEDGER_VERSION = 1
DEFAULT_LEDGER = "mirrored.json"
#: the markdown page of each repo type, relative to the project root
PAGES: Mapping[RepoType, str] = MappingProxyType({"model": "models.md", "dataset": "datasets.md"})
_SECTIONS: Mapping[RepoType, str] = MappingProxyType({"model": "models", "dataset": "datasets"})
_FIELDS = tuple(f.name for f in fields(Mirrored))
_REQUIRED = tuple(
    f.name for f in fields(Mirrored) if f.default is MISSING and f.default_factory is MISSING
)
DEFAULT_AUTHOR = ("hf2oci", "hf2oci@users.noreply.github.com")


# --- the ledger -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ledger:
    """Every repo mirrored so far, by type and repo id; the source of the markdown pages."""

    models: Mapping[str, Mirrored] = field(default_factory=lambda: MappingProxyType({}))
    datasets: Mapping[str, Mirrored] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        # read-only views, so a Ledger shared between callers cannot change under them
        object.__setattr__(self, "models", MappingProxyType(dict(self.models)))
        object.__setattr__(self, "datasets", MappingProxyType(dict(self.datasets)))

    def section(self, repo_type: RepoType) -> Mapping[str, Mirrored]:
        return self.models if repo_type == "model" else self.datasets

    def entries(self, repo_type: RepoType) -> list[Mirrored]:
        """The entries of one type, sorted by repo id."""
        section = self.section(repo_type)
        return [section[key] for key in sorted(section)]

    def merge(self, results: Iterable[Mirrored]) -> Ledger:
        """A new ledger with ``results`` added; the newer mirror of a repo replaces the older."""
        merged: dict[RepoType, dict[str, Mirrored]] = {
            "model": dict(self.models),
            "dataset": dict(self.datasets),
        }
        for result in results:
            if result.repo_type not in merged:
                raise RecordError(f"{result.repo_id}: unknown repo type {result.repo_type!r}")
            section = merged[result.repo_type]
            old = section.get(result.repo_id)
            if old is None or _timestamp(old) <= _timestamp(result):
                section[result.repo_id] = result
        return Ledger(models=merged["model"], datasets=merged["dataset"])

    def lookup_tag(self, tag: str, *, repo_type: RepoType | None = None) -> Mirrored | None:
        """The entry that wrote ``tag`` (the way back from a shortened tag to its repo)."""
        for kind in (repo_type,) if repo_type else REPO_TYPES:
            for entry in self.entries(kind):
                if tag in entry.tags:
                    return entry
        return None

    def to_json(self) -> str:
        """Sorted keys, 2-space indent and a final newline, so that git diffs stay small."""
        doc = {
            "version": LEDGER_VERSION,
            **{
                _SECTIONS[kind]: {e.repo_id: asdict(e) for e in self.entries(kind)}
                for kind in REPO_TYPES
            },
        }
        return json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str, *, source: str = "<ledger>") -> Ledger:
        """Parse a ledger; errors name ``source`` (and the line, for bad JSON)."""
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise RecordError(f"{source}:{e.lineno}: not valid JSON: {e.msg}") from e
        if not isinstance(doc, dict):
            raise RecordError(f"{source}: expected a JSON object")
        if doc.get("version") != LEDGER_VERSION:
            raise RecordError(
                f"{source}: unsupported ledger version {doc.get('version')!r}"
                f" (this hf2oci reads version {LEDGER_VERSION})"
            )
        sections: dict[RepoType, dict[str, Mirrored]] = {}
        for kind in REPO_TYPES:
            raw = doc.get(_SECTIONS[kind], {})
            if not isinstance(raw, dict):
                raise RecordError(f"{source}: {_SECTIONS[kind]!r} must be an object")
            sections[kind] = {
                key: _entry(key, value, kind=kind, where=f"{source}: {_SECTIONS[kind]}[{key!r}]")
                for key, value in raw.items()
            }
        return cls(models=sections["model"], datasets=sections["dataset"])


def _entry(key: str, value: Any, *, kind: RepoType, where: str) -> Mirrored:
    if not isinstance(value, dict):
        raise RecordError(f"{where}: expected an object")
    missing = [name for name in _REQUIRED if name not in value]
    if missing:
        raise RecordError(f"{where}: missing {', '.join(missing)}")
    # unknown keys are dropped, so that a newer hf2oci's ledger still reads
    known = {name: value[name] for name in _FIELDS if name in value}
    if known["repo_id"] != key:
        raise RecordError(f"{where}: repo_id is {known['repo_id']!r}, not the key")
    if known["repo_type"] != kind:
        raise RecordError(f"{where}: repo_type is {known['repo_type']!r}, expected {kind!r}")
    if not isinstance(known["tags"], list) or not all(isinstance(t, str) for t in known["tags"]):
        raise RecordError(f"{where}: tags must be a list of strings")
    known["tags"] = tuple(known["tags"])
    return Mirrored(**known)


def _timestamp(entry: Mirrored) -> datetime:
    """When it was mirrored; an unreadable time sorts first, so any real mirror replaces it."""
    try:
        when = datetime.fromisoformat(entry.mirrored_at.replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def load_ledger(path: Path) -> Ledger:
    """The ledger at ``path``; a missing file is an empty ledger."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Ledger()
    except (OSError, UnicodeDecodeError) as e:
        raise RecordError(f"cannot read {path}: {e}") from e
    return Ledger.from_json(text, source=str(path))


def save_ledger(ledger: Ledger, path: Path) -> None:
    """Write the ledger atomically: readers see the old file or the new one, never half."""
    _atomic_write(path, ledger.to_json())


def _atomic_write(path: Path, text: str, *, skip_if_same: bool = False) -> bool:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(path, text, skip_if_same=skip_if_same)
    except OSError as e:
        raise RecordError(f"cannot write {path}: {e.strerror or e}") from e


def _write_if_changed(path: Path, text: str) -> bool:
    return _atomic_write(path, text, skip_if_same=True)


# --- markdown ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    repo_id: str
    url: str
    revision: str
    requested: str
    tags: tuple[str, ...]
    size: str
    file_count: int
    date: str
    pull: str


def _daemon_name(entry: Mirrored) -> str:
    """The Docker name of a layout image: its last two path parts (``ns/models``)."""
    return "/".join(PurePosixPath(entry.image).parts[-2:]).lower()


def pull_command(entry: Mirrored) -> str:
    """How to get the image into Docker, by where it was written."""
    tag = entry.tags[0]
    if entry.destination == "oci-layout":
        return f"skopeo copy oci:{entry.image}:{tag} docker-daemon:{_daemon_name(entry)}:{tag}"
    if entry.destination == "docker-engine":  # loaded into the mirroring machine's engine
        return f"docker image inspect {entry.image}:{tag}"
    return f"docker pull {entry.image}:{tag}"


def _row(entry: Mirrored) -> _Row:
    rev = entry.revision[:12]
    requested = entry.requested_revision
    # the requested revision says something only when it is a branch or tag other than main
    shown = "" if requested in ("", "main") or entry.revision.startswith(requested) else requested
    return _Row(
        repo_id=entry.repo_id,
        url=hub_url(entry.repo_id, entry.repo_type),
        revision=rev,
        requested=shown,
        tags=entry.tags,
        size=human_size(entry.size),
        file_count=entry.file_count,
        date=entry.mirrored_at[:10],
        pull=pull_command(entry),
    )


def render_markdown(
    ledger: Ledger, repo_type: RepoType, *, source: str = f"get_hf/{DEFAULT_LEDGER}"
) -> str:
    """The page for one repo type (models.md or datasets.md); the same ledger, the same bytes."""
    entries = ledger.entries(repo_type)
    example: dict[str, Any] = {}
    if entries:
        # the copy-out example prefers a pushed image: it is what most readers have
        first = next((e for e in entries if e.destination != "oci-layout"), entries[0])
        tag = first.tags[0]
        layouts = [e for e in entries if e.destination == "oci-layout"]
        example = {
            "ref": (
                f"{_daemon_name(first)}:{tag}"
                if first.destination == "oci-layout"
                else f"{first.image}:{tag}"
            ),
            "oci_layout": bool(layouts),
            "layout_ref": f"{layouts[0].image}:{layouts[0].tags[0]}" if layouts else "",
        }
    return render(
        "records.md.j2",
        kind=repo_type,
        plural=_SECTIONS[repo_type],
        source=source,
        rows=[_row(e) for e in entries],
        example=example,
    )


def write_records(
    ledger: Ledger, *, root: Path, source: str = f"get_hf/{DEFAULT_LEDGER}"
) -> list[Path]:
    """Write ``root/models.md`` and ``root/datasets.md``; returns the files whose bytes changed."""
    changed = []
    for kind in REPO_TYPES:
        path = root / PAGES[kind]
        if _write_if_changed(path, render_markdown(ledger, kind, source=source)):
            changed.append(path)
    return changed


def record_results(
    results: Iterable[Mirrored],
    *,
    get_hf: Path,
    ledger_name: str = DEFAULT_LEDGER,
    root: Path | None = None,
) -> list[Path]:
    """Merge ``results`` into ``get_hf/<ledger_name>`` and re-render the pages in ``root``.

    ``root`` defaults to the folder that holds ``get_hf``. Returns the files that changed.
    """
    root = get_hf.parent if root is None else root
    path = get_hf / ledger_name
    ledger = load_ledger(path).merge(results)
    changed = [path] if _write_if_changed(path, ledger.to_json()) else []
    try:
        source = path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        source = path.name
    return changed + write_records(ledger, root=root, source=source)


# --- git --------------------------------------------------------------------------------------


def commit_message(results: Sequence[Mirrored]) -> str:
    """``Mirror 2 models, 1 dataset`` and one line per repo."""
    if not results:
        return "Update mirror records"
    counts = []
    for kind in REPO_TYPES:
        n = sum(1 for r in results if r.repo_type == kind)
        if n:
            counts.append(f"{n} {kind}{'' if n == 1 else 's'}")
    lines = [
        f"- {r.repo_id} @{r.revision[:12]} → {r.image}:{r.tags[0] if r.tags else '?'}"
        for r in results
    ]
    return f"Mirror {', '.join(counts)}\n\n" + "\n".join(lines)


_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s'\"]+@")


def redact(text: str) -> str:
    """Hide credentials in URLs: ``https://user:token@host`` → ``https://***@host``."""
    return _CREDENTIALS.sub(r"\g<scheme>***@", text)


def _git_failure(action: str, e: git.GitCommandError) -> RecordError:
    """One line from git's stderr (its ``fatal:``/``error:`` line when it has one), redacted."""
    stderr = e.stderr if isinstance(e.stderr, str) else str(e.stderr or "")
    lines = [ln.strip() for ln in stderr.replace("stderr:", "").strip(" '\n").splitlines()]
    lines = [ln for ln in lines if ln]
    key = [ln for ln in lines if ln.startswith(("fatal:", "error:", "!"))]
    detail = (key or lines or [f"exit status {e.status}"])[0]
    return RecordError(redact(f"{action}: {detail}"))


class _PushRejected(Exception):
    """The remote moved since we fetched: rebase and push again."""


def _identity_env(repo: git.Repo) -> dict[str, str]:
    """Author and committer for git: the environment, else git config, else hf2oci's own."""
    try:
        reader = repo.config_reader()
        configured = {
            key: str(reader.get_value("user", key, default="")) for key in ("name", "email")
        }
    except (OSError, ValueError, configparser.Error):  # unreadable: use the default identity
        configured = {"name": "", "email": ""}
    defaults = dict(zip(("name", "email"), DEFAULT_AUTHOR, strict=True))
    # never wait for a password on a terminal nobody watches
    env: dict[str, str] = {"GIT_TERMINAL_PROMPT": "0"}
    for key in ("name", "email"):
        author = os.environ.get(f"GIT_AUTHOR_{key.upper()}") or configured[key] or defaults[key]
        env[f"GIT_AUTHOR_{key.upper()}"] = author
        env[f"GIT_COMMITTER_{key.upper()}"] = (
            os.environ.get(f"GIT_COMMITTER_{key.upper()}") or configured[key] or author
        )
    return env


def _open_repo(repo_root: Path) -> git.Repo:
    try:
        return git.Repo(repo_root)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as e:
        raise RecordError(f"{repo_root}: not a git repository") from e


def commit_records(
    repo_root: Path,
    paths: Sequence[Path],
    *,
    message: str,
    push: bool = False,
    remote: str = "origin",
    branch: str | None = None,
    retries: int = 5,
) -> str | None:
    """Commit exactly ``paths`` (other staged work stays staged); returns the sha, or None.

    With ``push``, a push the remote rejects because another run pushed first is rebased onto
    the remote branch and tried again, at most ``retries`` times; a rebase conflict is aborted
    and raised.
    """
    repo = _open_repo(repo_root)
    try:
        return _commit_and_push(
            repo,
            Path(repo.working_tree_dir or repo_root).resolve(),
            paths,
            message=message,
            push=push,
            remote=remote,
            branch=branch,
            retries=retries,
        )
    finally:
        repo.close()  # gitpython keeps `git cat-file` helpers running otherwise


def _commit_and_push(
    repo: git.Repo,
    top: Path,
    paths: Sequence[Path],
    *,
    message: str,
    push: bool,
    remote: str,
    branch: str | None,
    retries: int,
) -> str | None:
    rel = []
    for p in paths:
        full = p.resolve()  # relative to the current folder, like every other path
        try:
            rel.append(full.relative_to(top).as_posix())
        except ValueError as e:
            raise RecordError(f"{p} is outside the git repository {top}") from e
    env = _identity_env(repo)
    sha = _commit(repo, rel, message=message, env=env) if rel else None
    if push:
        if branch is None:
            if repo.head.is_detached:
                raise RecordError(f"{top}: HEAD is detached; name the branch to push to")
            branch = repo.active_branch.name
        _push_with_rebase(repo, remote=remote, branch=branch, retries=retries, env=env)
        if sha is not None:
            sha = repo.head.commit.hexsha  # a rebase gave the commit a new sha
    return sha


def _commit(repo: git.Repo, rel: list[str], *, message: str, env: dict[str, str]) -> str | None:
    try:
        # -A stages deletions too; only these paths are touched
        repo.git.add("-A", "--", *rel)
        status, _, _ = repo.git.diff(
            "--cached", "--quiet", "--", *rel, with_extended_output=True, with_exceptions=False
        )
        if status == 0:
            log.debug("records unchanged: nothing to commit")
            return None
        # --only: commit these paths alone, even when the user has other changes staged
        repo.git.commit("--only", "--no-verify", "-m", message, "--", *rel, env=env)
    except git.GitCommandError as e:
        raise _git_failure("git commit of the records failed", e) from e
    return repo.head.commit.hexsha


def _push_with_rebase(
    repo: git.Repo, *, remote: str, branch: str, retries: int, env: dict[str, str]
) -> None:
    def attempt() -> None:
        try:
            repo.git.push(remote, f"HEAD:refs/heads/{branch}", env=env)
            return
        except git.GitCommandError as e:
            stderr = str(e.stderr)
            if not any(s in stderr for s in ("[rejected]", "fetch first", "non-fast-forward")):
                raise _git_failure(f"git push to {remote} failed", e) from e
        log.info("push to %s/%s rejected (the remote moved); rebasing", remote, branch)
        try:
            repo.git.pull("--rebase", "--autostash", remote, branch, env=env)
        except git.GitCommandError as e:
            with contextlib.suppress(git.GitCommandError):
                repo.git.rebase("--abort", env=env)
            raise _git_failure(
                f"cannot rebase the records onto {remote}/{branch} (run hf2oci again)", e
            ) from e
        raise _PushRejected

    try:
        for tried in Retrying(
            stop=stop_after_attempt(max(1, retries)),
            wait=wait_random_exponential(multiplier=0.5, max=10),
            retry=retry_if_exception_type(_PushRejected),
        ):
            with tried:
                attempt()
    except RetryError as e:
        raise RecordError(
            redact(f"git push to {remote}/{branch} was rejected {retries} times")
            + ": other runs keep pushing; run hf2oci again"
        ) from e
