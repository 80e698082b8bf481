"""The verifying readers (``digest.verified``, ``digest.SplitCheck``): what the hub says a file
hashes to, checked while its bytes pass, the last piece held back until it matches."""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Iterator

import pytest

from hf2oci.digest import Expected, SplitCheck, git_blob_hash, verified
from hf2oci.errors import DigestMismatch, PackError

DATA = random.Random("digest").randbytes(100_000)
SHA256 = Expected(len(DATA), sha256=hashlib.sha256(DATA).hexdigest())


def _blob_id(data: bytes) -> str:
    h = git_blob_hash(len(data))
    h.update(data)
    return str(h.hexdigest())


def _pieces(data: bytes, size: int = 7_000) -> Iterator[bytes]:
    for at in range(0, len(data), size):
        yield data[at : at + size]


@pytest.mark.parametrize("background", [False, True])
@pytest.mark.parametrize(
    "expected",
    [SHA256, Expected(len(DATA), blob_id=_blob_id(DATA))],
    ids=["sha256", "git-blob"],
)
def test_verified_gives_the_bytes_and_holds_the_last_piece_until_they_match(
    expected: Expected, background: bool
) -> None:
    assert b"".join(verified(_pieces(DATA), expected, what="f", background=background)) == DATA
    bad = bytearray(DATA)
    bad[-1] ^= 1
    got = bytearray()
    with pytest.raises(DigestMismatch, match="content hashes to"):
        for piece in verified(_pieces(bytes(bad)), expected, what="f", background=background):
            got += piece
    assert len(got) < len(DATA)  # the last piece never came out
    with pytest.raises(DigestMismatch, match="more than its"):
        b"".join(verified(_pieces(DATA + b"x"), expected, what="f"))
    with pytest.raises(DigestMismatch, match="bytes, the hub says"):
        b"".join(verified(_pieces(DATA[:-1]), expected, what="f"))


BOUNDS = [(0, 40_000), (40_000, 80_000), (80_000, len(DATA))]


def _check(data: bytes = DATA) -> SplitCheck:
    return SplitCheck(SHA256, BOUNDS, lambda a, b: _pieces(data[a:b]), what="w.bin")


def test_ranges_read_in_order_or_again_give_the_file_checked_as_a_whole() -> None:
    check = _check()
    parts = [b"".join(check.source(k)()) for k in range(3)]
    assert b"".join(parts) == DATA
    assert b"".join(check.source(1)()) == DATA[40_000:80_000]  # a range read again
    assert b"".join(check.source(2)()) == DATA[80_000:]


def test_a_wrong_byte_in_an_early_range_fails_the_last_ones_last_piece() -> None:
    bad = bytearray(DATA)
    bad[10] ^= 1
    check = _check(bytes(bad))
    assert len(b"".join(check.source(0)())) == 40_000  # no hash covers a range alone
    assert len(b"".join(check.source(1)())) == 40_000
    got = bytearray()
    with pytest.raises(DigestMismatch):
        for piece in check.source(2)():
            got += piece
    assert len(got) < len(DATA) - 80_000


def test_a_range_waits_for_the_one_before_and_a_failure_reaches_every_one_after() -> None:
    """Readers of later ranges that started first wait; when an earlier range's pass fails,
    each of them fails in turn instead of waiting for ever."""

    def read(a: int, b: int) -> Iterator[bytes]:
        if a == 0:
            raise OSError("the hub went away")
        yield DATA[a:b]

    check = SplitCheck(SHA256, BOUNDS, read, what="w.bin")
    errors: dict[int, BaseException] = {}

    def run(k: int) -> None:
        try:
            b"".join(check.source(k)())
        except BaseException as e:
            errors[k] = e

    waiting = [threading.Thread(target=run, args=(k,)) for k in (2, 1)]
    for t in waiting:
        t.start()
    run(0)
    for t in waiting:
        t.join(timeout=10)
        assert not t.is_alive(), "a later range still waits for a pass that failed"
    assert isinstance(errors[0], OSError)
    assert isinstance(errors[1], PackError) and isinstance(errors[2], PackError)


def test_ranges_that_do_not_cover_the_file_are_refused() -> None:
    with pytest.raises(PackError, match="do not cover"):
        SplitCheck(SHA256, [(0, 10), (11, len(DATA))], lambda a, b: iter([]), what="w")


def test_an_empty_file_is_checked_too() -> None:
    empty = Expected(0, sha256=hashlib.sha256(b"").hexdigest())
    assert list(verified(iter([]), empty, what="e")) == []
    with pytest.raises(DigestMismatch):
        list(verified(iter([]), Expected(0, sha256="0" * 64), what="e"))
