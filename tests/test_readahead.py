"""The verified read-ahead under extract: order, digests, errors, forward seeks, O_DIRECT writes."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hf2oci.consume.readahead import O_DIRECT, ChunkReader, ReadAhead
from hf2oci.errors import DigestMismatch

BUF = 4096  # small buffers, so that every span crosses several of them


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _reader(data: bytes, **kw: object) -> ChunkReader:
    args: dict[str, object] = {"digest": _digest(data), "size": len(data), "what": "blob"}
    args.update(kw)
    src = io.BytesIO(data)
    return ChunkReader(ReadAhead(src.readinto, buffer_size=BUF, **args))  # type: ignore[arg-type]


ops = st.lists(
    st.tuples(st.sampled_from(["read", "seek", "copy"]), st.integers(0, 3 * BUF + 5)),
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 5 * BUF + 3), steps=ops)
def test_reads_seeks_and_copies_see_the_bytes_in_order(
    size: int, steps: list[tuple[str, int]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    data = os.urandom(size)
    model = io.BytesIO(data)
    reader = _reader(data)
    out = tmp_path_factory.mktemp("copy") / "out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    copied = b""
    try:
        for op, n in steps:
            if op == "read":
                assert reader.read(n) == model.read(n)
            elif op == "seek":
                target = min(model.tell() + n, size)
                assert reader.seek(model.tell() + n) == target
                model.seek(target)
            else:
                want = model.read(n)
                assert reader.copy_to(fd, n) == len(want)
                copied += want
            assert reader.tell() == model.tell()
        reader.drain()  # the end is checked: right digest and size, no error
    finally:
        os.close(fd)
        reader.close()
    assert out.read_bytes() == copied


def test_a_wrong_digest_or_size_is_raised_at_the_end_not_before() -> None:
    data = os.urandom(3 * BUF)
    reader = _reader(data, digest=_digest(b"other"))
    assert reader.read(len(data)) == data  # the bytes come first …
    with pytest.raises(DigestMismatch, match="hashed to"):
        reader.read(1)  # … the verdict when the end is reached
    short = _reader(data, size=len(data) + 1)
    with pytest.raises(DigestMismatch, match=f"got {len(data)} bytes, expected {len(data) + 1}"):
        short.drain()


def test_a_source_error_comes_after_the_bytes_read_before_it() -> None:
    data = os.urandom(2 * BUF)
    src = io.BytesIO(data)

    def failing(buffer: memoryview) -> int:
        n = src.readinto(buffer)
        if not n:
            raise ConnectionResetError("cut")
        return n

    reader = ChunkReader(ReadAhead(failing, digest=None, size=None, what="x", buffer_size=BUF))
    assert reader.read(len(data)) == data
    with pytest.raises(ConnectionResetError, match="cut"):
        reader.read(1)


def test_seeking_backwards_is_refused() -> None:
    reader = _reader(os.urandom(BUF))
    reader.seek(100)
    with pytest.raises(io.UnsupportedOperation):
        reader.seek(99)
    reader.close()


def test_close_stops_a_reader_that_is_still_producing() -> None:
    produced = threading.Event()

    def endless(buffer: memoryview) -> int:
        produced.set()
        buffer[:] = b"\0" * len(buffer)
        return len(buffer)

    reader = ChunkReader(ReadAhead(endless, digest=None, size=None, what="x", buffer_size=BUF))
    assert reader.read(10) == b"\0" * 10 and produced.wait(5)
    started = time.monotonic()
    reader.close()  # the consumer gave up (another layer failed): the threads end
    assert time.monotonic() - started < 2
    assert not any(t.name.startswith("blob-") and t.is_alive() for t in threading.enumerate())


@pytest.mark.skipif(not O_DIRECT, reason="no O_DIRECT on this system")
@pytest.mark.parametrize("start", [0, 512, 100])
def test_copies_to_an_o_direct_file_give_the_exact_bytes(tmp_path: Path, start: int) -> None:
    # 512-aligned spans go direct; a misaligned start or a short tail turns O_DIRECT off
    data = os.urandom((3 << 20) + 777)
    src = io.BytesIO(data)
    reader = ChunkReader(ReadAhead(src.readinto, digest=_digest(data), size=len(data), what="x"))
    out = tmp_path / "out"
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_DIRECT)
    except OSError:
        pytest.skip("this filesystem refuses O_DIRECT")
    try:
        reader.seek(start)
        assert reader.copy_to(fd, len(data)) == len(data) - start
    finally:
        os.close(fd)
        reader.close()
    assert out.read_bytes() == data[start:]
