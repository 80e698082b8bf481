"""ListObjects over the repos of a bucket: every file of a repo's default revision is the key
``ORG/NAME/PATH`` (a pinned revision's, ``ORG/NAME@REV/PATH``, when the prefix names it), in
S3's order (UTF-8 bytes, as Python orders str), with prefix, delimiter, a page size and a marker
to go on from. A repo rolled up into a common prefix is not opened."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from hf2oci.consume.serve.files import RepoFile
from hf2oci.consume.serve.store import Snapshot

#: S3's most keys in one page (and the default)
MAX_KEYS = 1000


@dataclass(frozen=True)
class Marker:
    """Where a page ended: its last key, or its last common prefix (then every key under it
    was rolled up into it and comes no more)."""

    key: str
    rolled: bool = False

    def token(self) -> str:
        return base64.urlsafe_b64encode(f"{int(self.rolled)}{self.key}".encode()).decode()

    @classmethod
    def from_token(cls, token: str) -> Marker:
        """ValueError for a token that this server did not give."""
        try:
            text = base64.urlsafe_b64decode(token.encode("ascii")).decode()
        except (UnicodeError, binascii.Error) as e:
            raise ValueError("not a continuation token") from e
        if text[:1] not in ("0", "1"):
            raise ValueError("not a continuation token")
        return cls(text[1:], text[0] == "1")

    def passed(self, key: str) -> bool:
        """True when ``key`` was on a page up to this marker."""
        return key <= self.key or (self.rolled and key.startswith(self.key))


@dataclass(frozen=True)
class Item:
    key: str
    #: None: a common prefix
    file: RepoFile | None = None
    snapshot: Snapshot | None = None


@dataclass(frozen=True)
class Page:
    items: list[Item]
    #: where the next page starts; None: this was the last
    next: Marker | None


#: a repo at a revision, or None when it is not there (or not verified)
Opener = Callable[[str, str], Snapshot | None]


def page(
    *,
    prefix: str,
    delimiter: str,
    max_keys: int,
    after: Marker | None,
    repos: Callable[[], list[str]],
    open_repo: Opener,
    roll_unopened: bool = True,
) -> Page:
    """One page of keys and common prefixes (``max_keys`` of them at most). ``repos`` lists
    the repo ids of the bucket (asked only when the prefix does not name one); with
    ``roll_unopened`` False a repo is opened before it counts under a common prefix (a store
    with a verify key lists only what verifies)."""
    items: list[Item] = []
    if max_keys <= 0:
        return Page(items, None)
    stream = _items(prefix, delimiter, after, repos, open_repo, roll_unopened)
    for item in stream:
        if len(items) == max_keys:
            last = items[-1]
            return Page(items, Marker(last.key, last.file is None))
        items.append(item)
    return Page(items, None)


def _bases(prefix: str, repos: Callable[[], list[str]]) -> list[tuple[str, str, str]]:
    """``(key prefix of a repo, repo id, revision)`` of the repos the prefix may list, sorted."""
    head = prefix.split("/", 2)
    if len(head) == 3:  # ORG/NAME[@REV]/…: one repo
        name, at, revision = head[1].partition("@")
        if at and not revision:
            return []
        return [(f"{head[0]}/{head[1]}/", f"{head[0]}/{name}", revision if at else "main")]
    return sorted((f"{r}/", r, "main") for r in repos() if f"{r}/".startswith(prefix))


def _items(
    prefix: str,
    delimiter: str,
    after: Marker | None,
    repos: Callable[[], list[str]],
    open_repo: Opener,
    roll_unopened: bool,
) -> Iterator[Item]:
    rolled: str | None = None  # the last common prefix given

    def rollup(key: str) -> str | None:
        if not delimiter:
            return None
        at = key.find(delimiter, len(prefix))
        return key[: at + len(delimiter)] if at >= 0 else None

    for base, repo_id, revision in _bases(prefix, repos):
        if after is not None and _all_passed(base, after):
            continue
        common = rollup(base) if len(base) > len(prefix) else None
        if common is not None and roll_unopened:
            if common != rolled and (after is None or not after.passed(common)):
                rolled = common
                yield Item(common)
            continue
        snap = open_repo(repo_id, revision)
        if snap is None:
            continue
        for path in sorted(snap.files):
            key = base + path
            if not key.startswith(prefix) or (snap.signed is not None and path not in snap.signed):
                continue
            common = rollup(key)
            if common is not None:
                if common != rolled and (after is None or not after.passed(common)):
                    rolled = common
                    yield Item(common)
            elif after is None or not after.passed(key):
                yield Item(key, snap.files[path], snap)


def _all_passed(base: str, after: Marker) -> bool:
    """True when every key under ``base`` is on the pages up to ``after`` (no need to open
    the repo): ``base`` sorts before the marker without being a prefix of it, or the marker
    rolled up ``base`` whole."""
    if after.rolled and base.startswith(after.key):
        return True
    return base < after.key and not after.key.startswith(base)
