"""The S3 face's ListObjects paging (``consume/serve/s3/listing.py``) against a plain model of
S3's rules: every key under the prefix in byte order, keys with the delimiter after the prefix
rolled into one common prefix, pages of ``max_keys`` that together give each item once."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from hf2oci.consume.serve.s3 import listing

_PART = st.text(alphabet="ab-_", min_size=1, max_size=3).filter(
    lambda s: s[0] not in "-" and s[-1] not in "-"
)
_PATH = st.lists(st.text(alphabet="ab -+é.", min_size=1, max_size=3), min_size=1, max_size=3).map(
    "/".join
)
_REPOS = st.dictionaries(
    st.tuples(_PART, _PART).map("/".join), st.sets(_PATH, min_size=1, max_size=6), max_size=5
)


def _model(keys: list[str], prefix: str, delimiter: str) -> list[tuple[str, bool]]:
    out: list[tuple[str, bool]] = []
    for key in sorted(keys):
        if not key.startswith(prefix):
            continue
        at = key.find(delimiter, len(prefix)) if delimiter else -1
        if at >= 0:
            common = key[: at + len(delimiter)]
            if not out or out[-1] != (common, True):
                out.append((common, True))
        else:
            out.append((key, False))
    return out


def _pages(
    repos: dict[str, set[str]], prefix: str, delimiter: str, max_keys: int, roll: bool
) -> tuple[list[tuple[str, bool]], list[str]]:
    opened: list[str] = []

    def open_repo(repo_id: str, revision: str) -> Any:
        opened.append(repo_id)
        if repo_id not in repos or revision != "main":
            return None
        return SimpleNamespace(files={p: object() for p in repos[repo_id]}, signed=None)

    got: list[tuple[str, bool]] = []
    after = None
    for _ in range(1000):
        page = listing.page(prefix=prefix, delimiter=delimiter, max_keys=max_keys, after=after,
                            repos=lambda: list(repos), open_repo=open_repo,
                            roll_unopened=roll)  # fmt: skip
        assert len(page.items) <= max_keys
        got += [(i.key, i.file is None) for i in page.items]
        if page.next is None:
            return got, opened
        after = listing.Marker.from_token(page.next.token())  # through the token, as clients do
    raise AssertionError("the pages never end")


@settings(max_examples=300, deadline=None)
@given(
    repos=_REPOS,
    prefix=st.one_of(st.just(""), st.text(alphabet="ab-_/ é", max_size=8)),
    delimiter=st.sampled_from(["", "/", "-", "b/"]),
    max_keys=st.integers(1, 4),
    roll=st.booleans(),
    data=st.data(),
)
def test_pages_give_what_s3s_rules_say_each_item_once(
    repos: dict[str, set[str]], prefix: str, delimiter: str, max_keys: int, roll: bool, data: Any
) -> None:
    keys = [f"{repo}/{path}" for repo, paths in repos.items() for path in paths]
    if keys and data.draw(st.booleans()):  # often a prefix of a real key, to list something
        key = data.draw(st.sampled_from(sorted(keys)))
        prefix = key[: data.draw(st.integers(0, len(key)))]
    got, _ = _pages(repos, prefix, delimiter, max_keys, roll)
    assert got == _model(keys, prefix, delimiter)


def test_a_repo_rolled_into_a_common_prefix_is_not_opened() -> None:
    repos = {f"org{i}/m": {"config.json"} for i in range(5)}
    got, opened = _pages(repos, "", "/", 2, True)
    assert got == [(f"org{i}/", True) for i in range(5)] and opened == []
    got, opened = _pages(repos, "org3/", "/", 1000, True)
    assert got == [("org3/m/", True)] and opened == []
    got, opened = _pages(repos, "org3/m/", "/", 1000, True)
    assert got == [("org3/m/config.json", False)] and opened == ["org3/m"]
    _, opened = _pages(repos, "", "/", 1000, False)  # a verify key: each repo opened first
    assert sorted(opened) == sorted(repos)


def test_a_page_past_a_marker_opens_no_repo_before_it() -> None:
    repos = {f"org/m{i}": {"a", "b"} for i in range(6)}
    opened: list[str] = []

    def open_repo(repo_id: str, revision: str) -> Any:
        opened.append(repo_id)
        return SimpleNamespace(files={p: object() for p in repos[repo_id]}, signed=None)

    page = listing.page(prefix="", delimiter="", max_keys=2, after=listing.Marker("org/m4/b"),
                        repos=lambda: list(repos), open_repo=open_repo)  # fmt: skip
    assert [i.key for i in page.items] == ["org/m5/a", "org/m5/b"]
    assert opened == ["org/m4", "org/m5"]  # m4 may hold keys after "b"; m0..m3 none


def test_a_token_that_this_server_did_not_give_is_refused() -> None:
    for token in ("%%%", "eA==", ""):
        try:
            listing.Marker.from_token(token)
        except ValueError:
            continue
        raise AssertionError(f"{token!r} was taken")
    marker = listing.Marker("a/b é", rolled=True)
    assert listing.Marker.from_token(marker.token()) == marker
