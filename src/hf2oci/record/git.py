"""Committing the records with git and pushing them, rebasing when another run pushed first
(retried by the one retry policy)."""

from __future__ import annotations

import configparser
import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import git

from hf2oci.errors import RecordError
from hf2oci.redact import redact
from hf2oci.retry import RetryPolicy, retrying
from hf2oci.spec import REPO_TYPES, Mirrored

log = logging.getLogger(__name__)

DEFAULT_AUTHOR = ("hf2oci", "hf2oci@users.noreply.github.com")


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

    policy = RetryPolicy(attempts=max(1, retries), initial=0.5, max_wait=10)
    try:
        retrying(
            attempt,
            is_temporary=lambda e: isinstance(e, _PushRejected),
            what=f"push to {remote}/{branch}",
            policy=policy,
        )
    except _PushRejected as e:
        raise RecordError(
            redact(f"git push to {remote}/{branch} was rejected {retries} times")
            + ": other runs keep pushing; run hf2oci again"
        ) from e
