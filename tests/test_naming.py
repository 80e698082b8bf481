"""Repo id validation and the repo id ⇄ tag mapping, long tags included."""

from __future__ import annotations

import re

import pytest
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id as hub_validate_repo_id
from hypothesis import assume, given
from hypothesis import strategies as st

from hf2oci import naming
from hf2oci.errors import Hf2ociError, InvalidRepoId, UsageError

DOCKER_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
SHA = "0123456789abcdef0123456789abcdef01234567"

_word = st.sampled_from("abcXYZ019_")
_inner = st.sampled_from("abcXYZ019_.-")


@st.composite
def repo_parts(draw: st.DrawFn, max_size: int = 96) -> str:
    """A namespace or name the hub accepts (no '--', '..', starts/ends with a word char)."""
    size = draw(st.integers(1, max_size))
    if size == 1:
        return draw(_word)
    middle = draw(st.lists(_inner, min_size=size - 2, max_size=size - 2))
    part = draw(_word) + "".join(middle) + draw(_word)
    while "--" in part or ".." in part:
        part = part.replace("--", "-a").replace("..", ".a")
    return part


@st.composite
def repo_ids(draw: st.DrawFn) -> str:
    repo_id = f"{draw(repo_parts())}/{draw(repo_parts())}"
    assume(not repo_id.endswith(".git"))
    return repo_id


shas = st.text("0123456789abcdef", min_size=40, max_size=40)


def test_examples() -> None:
    assert naming.repo_tag("facebook/opt-125m") == "facebook--opt-125m"
    assert naming.revision_tag("facebook/opt-125m", SHA) == "facebook--opt-125m--0123456789ab"
    assert naming.revision_tag("facebook/opt-125m", SHA.upper()) == (
        "facebook--opt-125m--0123456789ab"
    )
    assert naming.repo_id_from_tag("facebook--opt-125m") == "facebook/opt-125m"
    assert naming.repo_id_from_tag("facebook--opt-125m--0123456789ab") == "facebook/opt-125m"
    # the image repository of a repo type: what the pipeline writes to
    from hf2oci.pack.destination import Destination

    assert Destination(namespace="hgfkeep").repository("model") == "hgfkeep/models"
    assert Destination(namespace="a/b").repository("dataset") == "a/b/datasets"


@pytest.mark.parametrize(
    ("repo_id", "reason"),
    [
        ("x y", "' ' is not allowed"),
        ("gpt2", "needs a namespace"),
        ("https://huggingface.co/facebook/opt-125m", "write 'facebook/opt-125m', not a URL"),
        ("huggingface.co/datasets/org/data", "write 'org/data', not a URL"),
        ("datasets/org/data", "drop the 'datasets/' prefix"),
        ("a/b/c", "single '/'"),
        ("a--b/c", "'--' and '..' are not allowed"),
        ("a/b..c", "'--' and '..' are not allowed"),
        ("-a/b", "namespace must start and end"),
        ("a/b.", "name must start and end"),
        ("/b", "namespace is empty"),
        ("a/", "name is empty"),
        ("a/" + "b" * 97, "longer than 96"),
        ("a/b.git", "'.git'"),
        ("a/café", "'é' is not allowed"),
        ("", "empty"),
    ],
)
def test_invalid_repo_ids(repo_id: str, reason: str) -> None:
    with pytest.raises(InvalidRepoId) as info:
        naming.validate_repo_id(repo_id)
    message = str(info.value)
    assert message.startswith(f"invalid repo id {repo_id!r}: ")
    assert reason in message
    assert "\n" not in message
    with pytest.raises(InvalidRepoId):
        naming.repo_tag(repo_id)


@pytest.mark.parametrize(
    "repo_id", ["a/b", "_a/b_", "A.b/c-D_e.f", "1/2", "a" * 96 + "/" + "b" * 96]
)
def test_valid_repo_ids(repo_id: str) -> None:
    assert naming.validate_repo_id(repo_id) == repo_id


@given(repo_ids())
def test_accepts_what_the_hub_accepts(repo_id: str) -> None:
    hub_validate_repo_id(repo_id)  # the generator makes only hub-valid ids
    assert naming.validate_repo_id(repo_id) == repo_id


@given(st.text(st.sampled_from("ab_.-/ é"), max_size=12))
def test_refuses_what_the_hub_refuses(text: str) -> None:
    try:
        hub_validate_repo_id(text)
    except HFValidationError:
        with pytest.raises(InvalidRepoId):
            naming.validate_repo_id(text)
    else:
        # the hub takes bare names too; mirroring needs the namespace for the tag
        if "/" in text:
            assert naming.validate_repo_id(text) == text
        else:
            with pytest.raises(InvalidRepoId, match="namespace"):
                naming.validate_repo_id(text)


@given(repo_ids(), shas)
def test_tags_are_valid_and_reversible(repo_id: str, sha: str) -> None:
    tag = naming.repo_tag(repo_id)
    rev = naming.revision_tag(repo_id, sha)
    for t in (tag, rev):
        assert DOCKER_TAG.fullmatch(t)
        assert len(t) <= naming.MAX_TAG_LENGTH
        assert naming.repo_tag(repo_id) == tag  # deterministic
    if not naming.is_shortened(tag):
        assert tag == repo_id.replace("/", "--")
        assert naming.repo_id_from_tag(tag) == repo_id
    if not naming.is_shortened(rev):
        assert rev == f"{repo_id.replace('/', '--')}--{sha[:12]}"
        assert naming.repo_id_from_tag(rev) == repo_id


@given(st.lists(st.tuples(repo_ids(), st.none() | shas), min_size=2, max_size=30, unique=True))
def test_tags_are_distinct_for_distinct_inputs(inputs: list[tuple[str, str | None]]) -> None:
    # ids differing only by the sha's tail share an immutable tag by design: compare 12 hex
    keys = {(r, s[:12] if s else None) for r, s in inputs}
    tags = {naming.revision_tag(r, s) if s else naming.repo_tag(r) for r, s in keys}
    assert len(tags) == len(keys)


@given(repo_parts(), repo_parts(), shas)
def test_long_tags_are_shortened_with_a_hash(org: str, name: str, sha: str) -> None:
    repo_id = f"{org}/{name}"
    assume(not repo_id.endswith(".git"))
    full = f"{org}--{name}--{sha[:12]}"
    rev = naming.revision_tag(repo_id, sha)
    assert naming.is_shortened(rev) == (len(full) > 128)
    if naming.is_shortened(rev):
        assert len(rev) == 128
        assert rev.startswith(full[:116])
        assert re.search(r"-h[0-9a-f]{10}$", rev)
        with pytest.raises(InvalidRepoId, match="shortened"):
            naming.repo_id_from_tag(rev)


def test_long_tag_example() -> None:
    repo_id = "o" * 96 + "/" + "n" * 96
    tag = naming.repo_tag(repo_id)
    assert tag == "o" * 96 + "--" + "n" * 18 + "-h" + _hash10("o" * 96 + "--" + "n" * 96)
    assert naming.is_shortened(tag)
    other = naming.repo_tag("o" * 96 + "/" + "n" * 95)
    assert other != tag and other[:116] == tag[:116]


def test_natural_tag_that_looks_shortened_is_shortened_too() -> None:
    # 128 chars ending "-h<10 hex>" without the rule: it must not pass for a shortened tag
    org = "o" * 30
    name = "n" * 83 + "-h0123456789"
    natural = f"{org}--{name}"
    assert len(natural) == 127
    assert naming.repo_tag(f"{org}/{name}") == natural and not naming.is_shortened(natural)
    lookalike = f"{org}--n{name}"
    assert len(lookalike) == 128
    tag = naming.repo_tag(f"{org}/n{name}")
    assert naming.is_shortened(tag) and tag != lookalike and len(tag) == 128


def test_is_shortened_is_false_for_short_tags() -> None:
    assert not naming.is_shortened("facebook--opt-125m")
    assert not naming.is_shortened("x-h0123456789")


@pytest.mark.parametrize(
    "tag",
    [
        "facebook",
        "a--b--c",
        "a--b--0123456789AB",
        "a--b--0123456789a",
        "a---b",
        "a--b--c--0123456789ab",
        "-a--b",
        "a b--c",
        "",
        "x" * 129,
    ],
)
def test_repo_id_from_malformed_tags(tag: str) -> None:
    with pytest.raises(InvalidRepoId) as info:
        naming.repo_id_from_tag(tag)
    assert isinstance(info.value, Hf2ociError)
    assert repr(tag) in str(info.value)


@pytest.mark.parametrize("sha", ["", "abc", "0123456789ag", "main"])
def test_revision_tag_needs_a_hex_sha(sha: str) -> None:
    with pytest.raises(UsageError, match="invalid commit sha"):
        naming.revision_tag("a/b", sha)


def _hash10(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:10]
