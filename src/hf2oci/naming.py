"""Repo id ⇄ image tag: the hub's repo id rules, the ``org--name`` tag and the long-tag rule."""

from __future__ import annotations

import hashlib
import os
import re
from urllib.parse import quote

from hf2oci.errors import InvalidRepoId, UsageError
from hf2oci.reference import TAG
from hf2oci.spec import RepoType, plural

__all__ = [
    "MAX_TAG_LENGTH",
    "InvalidRepoId",
    "is_shortened",
    "repo_id_from_tag",
    "repo_tag",
    "revision_tag",
    "validate_repo_id",
]

#: the distribution spec's limit on a tag
MAX_TAG_LENGTH = 128
#: the hub's limit on each of the namespace and the name
MAX_PART_LENGTH = 96
#: hex digits of the commit sha in an immutable tag
SHA_DIGITS = 12
#: hex digits of sha256(full tag) that end a shortened tag
HASH_DIGITS = 10

SEP = "--"
# \w in the hub's regex is ASCII [A-Za-z0-9_] (it compiles with re.ASCII)
_WORD = re.compile(r"[A-Za-z0-9_]")
_BAD_CHAR = re.compile(r"[^A-Za-z0-9_./-]")
_SHA = re.compile(r"[0-9a-fA-F]{12,64}")
_SHORT_SUFFIX = re.compile(rf"-h[0-9a-f]{{{HASH_DIGITS}}}")
_URL = re.compile(r"^(?:https?://)?(?:www\.)?(?:hf\.co|huggingface\.co)/(.*)$", re.IGNORECASE)


def validate_repo_id(repo_id: str) -> str:
    """Return ``repo_id`` if the hub would accept it as ``org/name``; raise InvalidRepoId if not.

    The rules are huggingface_hub's ``validate_repo_id`` (chars ``[A-Za-z0-9_.-]``, each part
    starts and ends with ``[A-Za-z0-9_]``, at most 96 chars, no ``--``, ``..`` or ``.git``
    suffix), plus a required namespace: a bare ``name`` has no tag of the form ``org--name``.
    """
    reason = _repo_id_problem(repo_id)
    if reason:
        raise InvalidRepoId(f"invalid repo id {repo_id!r}: {reason}")
    return repo_id


def _repo_id_problem(repo_id: str) -> str | None:
    if not repo_id:
        return "it is empty"
    url = _URL.match(repo_id)
    if url or "://" in repo_id:
        rest = url.group(1).strip("/") if url else ""
        for prefix in ("datasets/", "models/"):
            rest = rest.removeprefix(prefix)
        parts = rest.split("/")
        hint = f"'{parts[0]}/{parts[1]}'" if len(parts) >= 2 and all(parts[:2]) else "'org/name'"
        return f"write {hint}, not a URL"
    bad = _BAD_CHAR.search(repo_id)
    if bad:
        return f"{bad.group()!r} is not allowed (only letters, digits, '-', '_', '.' and one '/')"
    parts = repo_id.split("/")
    if len(parts) == 1:
        return "it needs a namespace: write 'org/name' (e.g. 'openai-community/gpt2', not 'gpt2')"
    if len(parts) > 2:
        if parts[0] in ("datasets", "models", "spaces"):
            return f"drop the '{parts[0]}/' prefix and write 'org/name'"
        return "write 'org/name', with a single '/'"
    for what, part in zip(("namespace", "name"), parts, strict=True):
        if not part:
            return f"the {what} is empty"
        if len(part) > MAX_PART_LENGTH:
            return f"the {what} is longer than {MAX_PART_LENGTH} characters"
        if not (_WORD.match(part[0]) and _WORD.match(part[-1])):
            return f"the {what} must start and end with a letter, a digit or '_'"
    if "--" in repo_id or ".." in repo_id:
        return "'--' and '..' are not allowed"
    if repo_id.endswith(".git"):
        return "it cannot end with '.git'"
    return None


def repo_tag(repo_id: str) -> str:
    """The moving tag of a repo: ``facebook/opt-125m`` → ``facebook--opt-125m``."""
    return _fit(validate_repo_id(repo_id).replace("/", SEP, 1))


def revision_tag(repo_id: str, commit_sha: str) -> str:
    """The immutable tag of one commit: ``facebook--opt-125m--<first 12 hex of the sha>``."""
    if not _SHA.fullmatch(commit_sha):
        raise UsageError(f"invalid commit sha {commit_sha!r}: expected 12 to 64 hex digits")
    full = validate_repo_id(repo_id).replace("/", SEP, 1) + SEP + commit_sha[:SHA_DIGITS].lower()
    return _fit(full)


def _fit(tag: str) -> str:
    """Shorten a tag over 128 chars to a prefix and ``-h<hash of the full tag>``.

    A natural tag that already looks shortened (128 chars ending ``-h<10 hex>``) is shortened
    too, so shortened and natural tags never collide and ``is_shortened`` is exact.
    """
    if len(tag) < MAX_TAG_LENGTH or (len(tag) == MAX_TAG_LENGTH and not _looks_short(tag)):
        return tag
    digest = hashlib.sha256(tag.encode()).hexdigest()[:HASH_DIGITS]
    suffix = f"-h{digest}"
    return tag[: MAX_TAG_LENGTH - len(suffix)] + suffix


def _looks_short(tag: str) -> bool:
    return len(tag) == MAX_TAG_LENGTH and _SHORT_SUFFIX.search(tag) is not None


def is_shortened(tag: str) -> bool:
    """True for tags made by the long-tag rule (their repo id is only in the record)."""
    return _looks_short(tag) and TAG.fullmatch(tag) is not None


def repo_id_from_tag(tag: str) -> str:
    """The repo id of ``org--name`` or ``org--name--<12 hex>``; InvalidRepoId otherwise.

    A shortened tag cannot be reversed by the rule: ``hf2oci tag --reverse`` reads the ledger.
    """
    if not TAG.fullmatch(tag):
        raise InvalidRepoId(f"invalid tag {tag!r}: not a docker tag")
    if is_shortened(tag):
        raise InvalidRepoId(f"tag {tag!r} was shortened; find its repo id in the record")
    parts = tag.split(SEP)
    if len(parts) == 3 and re.fullmatch(rf"[0-9a-f]{{{SHA_DIGITS}}}", parts[2]):
        parts = parts[:2]
    if len(parts) != 2:
        raise InvalidRepoId(f"invalid tag {tag!r}: expected 'org--name' or 'org--name--<12 hex>'")
    repo_id = "/".join(parts)
    reason = _repo_id_problem(repo_id)
    if reason:
        raise InvalidRepoId(f"invalid tag {tag!r}: {repo_id!r} is not a repo id ({reason})")
    return repo_id


DEFAULT_ENDPOINT = "https://huggingface.co"


def hub_endpoint() -> str:
    """The hub URL, read from ``HF_ENDPOINT`` at call time (huggingface_hub reads it at import)."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hub_url(repo_id: str, repo_type: RepoType) -> str:
    """The repo's page on the hub in use: the same URL in labels and in models.md."""
    return f"{hub_endpoint()}/{hub_path(repo_id, repo_type)}"


def hub_path(repo_id: str, repo_type: RepoType) -> str:
    """The repo's path on the hub (``org/name``, ``datasets/org/name``), quoted."""
    prefix = "datasets/" if repo_type == "dataset" else ""
    return prefix + quote(repo_id, safe="/")


def image_repository(namespace: str, repo_type: RepoType) -> str:
    """The image repository of a repo type in a namespace: ``hgfkeep/models``."""
    return f"{namespace}/{plural(repo_type)}"
