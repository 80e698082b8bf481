"""Deterministic streamed tar: exact bytes, read back by Python's tarfile and GNU tar."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf2oci.errors import PackError
from hf2oci.oci.blobs import FileBlobLayer, TarLayer
from hf2oci.oci.image import MT_DOCKER_LAYER, MT_LAYER_GZIP, MT_LAYER_TAR, Layer
from hf2oci.oci.tarstream import (
    BLOCK,
    LINK_MODE,
    TarEntry,
    TarSize,
    TarStream,
    data_offsets,
    entries_for_files,
    entries_for_streams,
    entry_size,
    iter_tar,
    tar_size,
)
from layers import BytesLayer

LONG = "d" * 90 + "/" + "sous dossier é" * 5 + "/" + "f" * 130 + ".safetensors"
CONTENTS: dict[str, bytes] = {
    "config.json": b'{"a": 1}\n',
    "sub/données/é t.txt": "bonjour é\n".encode(),
    "sub/empty": b"",
    "sub/block": b"x" * 512,
    "weights.bin": os.urandom(3 * 1024 * 1024 + 7),
    LONG: b"long path\n",
    "日本語/モデル.gguf": b"\x00\x01" * 1000,
}


def make_tree(root: Path, contents: dict[str, bytes] = CONTENTS) -> list[tuple[str, Path]]:
    files = []
    for rel, data in contents.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files.append((rel, path))
    return files


@pytest.fixture
def tree(tmp_path: Path) -> list[tuple[str, Path]]:
    return make_tree(tmp_path / "src")


def tar_bytes(entries: list[TarEntry], **kw: int) -> bytes:
    return b"".join(iter_tar(entries, **kw))


def test_entries_sorted_with_parent_dirs_once(tree: list[tuple[str, Path]]) -> None:
    entries = entries_for_files(list(reversed(tree)))
    names = [e.name for e in entries]
    assert names[:2] == ["REPO/", "REPO/config.json"]
    assert len(names) == len(set(names))
    for i, name in enumerate(names):
        parent = name.rstrip("/").rpartition("/")[0]
        if parent:
            assert names.index(parent + "/") < i, name
    assert "REPO/sub/données/" in names
    dirs = [e for e in entries if e.is_dir]
    assert all(e.mode == 0o755 and e.size == 0 and e.name.endswith("/") for e in dirs)
    files = {e.name: e for e in entries if not e.is_dir}
    assert files["REPO/weights.bin"].size == len(CONTENTS["weights.bin"])
    assert all(e.mode == 0o644 for e in files.values())


def test_same_files_same_bytes(tmp_path: Path, tree: list[tuple[str, Path]]) -> None:
    first = tar_bytes(entries_for_files(tree))
    # the same contents elsewhere, listed in another order, with other mtimes
    other = make_tree(tmp_path / "other")
    for _, path in other:
        os.utime(path, (1_700_000_000, 1_700_000_000))
    second = tar_bytes(entries_for_files(list(reversed(other))))
    assert first == second
    assert len(first) == tar_size(entries_for_files(tree))
    assert len(first) % 512 == 0
    assert first.endswith(b"\0" * 1024)


def test_small_chunks_give_the_same_bytes(tree: list[tuple[str, Path]]) -> None:
    entries = entries_for_files(tree)
    chunks = list(iter_tar(entries, chunk_size=4096))
    assert max(len(c) for c in chunks) <= 4096
    assert b"".join(chunks) == tar_bytes(entries)


def test_python_tarfile_reads_exact_members(tree: list[tuple[str, Path]]) -> None:
    data = tar_bytes(entries_for_files(tree))
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        members = tf.getmembers()
        files = {m.name: tf.extractfile(m).read() for m in members if m.isfile()}  # type: ignore[union-attr]
    assert files == {f"REPO/{rel}": content for rel, content in CONTENTS.items()}
    assert any(len(m.name) > 200 for m in members)
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
        assert m.mode == (0o755 if m.isdir() else 0o644)
        assert m.isdir() or m.isfile()


def test_gnu_tar_lists_and_extracts(tmp_path: Path, tree: list[tuple[str, Path]]) -> None:
    archive = tmp_path / "layer.tar"
    archive.write_bytes(tar_bytes(entries_for_files(tree)))
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    listing = subprocess.run(
        ["tar", "--quoting-style=literal", "-tvf", str(archive)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    assert listing.stderr == ""
    lines = listing.stdout.splitlines()
    names = [line.split(" 1970-01-01 00:00 ", 1)[1] for line in lines]
    assert f"REPO/{LONG}" in names
    assert "REPO/sub/données/é t.txt" in names
    for line in lines:
        assert " 0/0 " in line
        assert line.startswith(("drwxr-xr-x", "-rw-r--r--"))
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-C", str(out), "-xf", str(archive)], check=True, env=env)
    found = {
        p.relative_to(out / "REPO").as_posix(): p.read_bytes()
        for p in (out / "REPO").rglob("*")
        if p.is_file()
    }
    assert found == CONTENTS


def test_huge_file_size_goes_in_a_pax_header(tmp_path: Path) -> None:
    size = 9 << 30  # beyond the 8 GiB a ustar size field holds
    header = TarEntry("REPO/big.bin", tmp_path / "big.bin", size).header()
    assert tar_size([TarEntry("REPO/big.bin", tmp_path / "big.bin", size)]) == (
        len(header) + size + 1024
    )
    with tarfile.open(fileobj=io.BytesIO(header + b"\0" * 1024), mode="r:") as tf:
        info = tf.next()
    assert info is not None and info.size == size and info.name == "REPO/big.bin"


@pytest.mark.parametrize("change", ["grow", "shrink"])
def test_file_changed_since_planning(tree: list[tuple[str, Path]], change: str) -> None:
    entries = entries_for_files(tree)
    path = dict(tree)["weights.bin"]
    if change == "grow":
        with path.open("ab") as f:
            f.write(b"more")
    else:
        os.truncate(path, 10)
    with pytest.raises(PackError, match=r"weights\.bin.*changed size"):
        tar_bytes(entries)
    with pytest.raises(PackError):
        TarStream(entries).read()


def test_file_shrinking_during_streaming(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"a" * 10000)
    chunks = iter_tar(entries_for_files([("f", path)]), chunk_size=1000)
    assert next(chunks).startswith(b"REPO/")  # dir header
    next(chunks)  # file header
    next(chunks)  # first 1000 bytes
    os.truncate(path, 1500)
    with pytest.raises(PackError, match="shrank"):
        list(chunks)


@pytest.mark.parametrize(
    "rel", ["", "/abs", "../x", "a/../b", "a//b", "./a", "a/", "a/.", "nul\0x"]
)
def test_invalid_names_refused(tmp_path: Path, rel: str) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    with pytest.raises(PackError, match="invalid file path"):
        entries_for_files([(rel, path)])


def test_duplicates_clashes_and_bad_sources(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    with pytest.raises(PackError, match="twice"):
        entries_for_files([("a", path), ("a", path)])
    with pytest.raises(PackError, match="both a file and a directory"):
        entries_for_files([("a", path), ("a/b", path)])
    with pytest.raises(PackError, match="not a regular file"):
        entries_for_files([("d", tmp_path)])
    with pytest.raises(PackError, match="cannot read"):
        entries_for_files([("m", tmp_path / "missing")])
    with pytest.raises(PackError, match="invalid prefix"):
        entries_for_files([("a", path)], prefix="../up")


def test_symlinks_are_followed(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"content")
    (tmp_path / "link").symlink_to(blob)
    data = tar_bytes(entries_for_files([("model.bin", tmp_path / "link")]))
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        member = tf.getmember("REPO/model.bin")
        assert member.isfile()
        assert tf.extractfile(member).read() == b"content"  # type: ignore[union-attr]


def test_tarstream_is_a_file(tree: list[tuple[str, Path]]) -> None:
    entries = entries_for_files(tree)
    expected = tar_bytes(entries)
    stream = TarStream(entries, chunk_size=1000)
    assert len(stream) == len(expected)
    assert stream.readable() and not stream.seekable()
    head = stream.read(700)
    assert head == expected[:700]  # full reads even across internal pieces
    assert stream.tell() == 700
    assert stream.seek(0) == 0
    parts = []
    while piece := stream.read(65536):
        assert len(piece) == 65536 or stream.tell() == len(expected)
        parts.append(piece)
    assert b"".join(parts) == expected
    stream.close()
    with pytest.raises(ValueError):
        stream.read(1)
    assert io.BufferedReader(TarStream(entries)).read() == expected


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    names=st.lists(
        st.text(
            st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
            min_size=1,
            max_size=120,
        ).filter(lambda s: s not in (".", "..")),
        min_size=1,
        max_size=5,
        unique=True,
    ),
    size=st.integers(0, 1500),
)
def test_size_and_names_roundtrip(tmp_path: Path, names: list[str], size: int) -> None:
    src = tmp_path / "payload"
    src.write_bytes(b"p" * size)
    files = [(f"dir {i}/{name}", src) for i, name in enumerate(names)]
    entries = entries_for_files(files, prefix="REPO")
    data = tar_bytes(entries)
    assert len(data) == tar_size(entries)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        got = sorted(m.name for m in tf.getmembers() if m.isfile())
    assert got == sorted(f"REPO/{rel}" for rel, _ in files)


# --- layers ------------------------------------------------------------------------------------


def test_tar_layer(tree: list[tuple[str, Path]]) -> None:
    layer = TarLayer(entries_for_files(tree))
    assert isinstance(layer, Layer)
    data = tar_bytes(entries_for_files(tree))
    assert layer.size == len(data)
    assert layer.digest == layer.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert layer.media_type == MT_LAYER_TAR
    with layer.open() as f:
        assert f.read() == data
    assert TarLayer(entries_for_files(tree)).digest == layer.digest
    trusted = TarLayer(entries_for_files(tree), digest="sha256:" + "a" * 64)
    assert trusted.digest == "sha256:" + "a" * 64
    with pytest.raises(PackError, match="invalid digest"):
        TarLayer(entries_for_files(tree), digest="md5:abc")


def test_tar_layer_hashes_once_across_threads(tree: list[tuple[str, Path]]) -> None:
    calls = []

    class Counting(TarLayer):
        def _hash(self) -> str:
            calls.append(1)
            return super()._hash()

    layer = Counting(entries_for_files(tree))
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(layer.digest)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results) == 8
    assert len(calls) == 1


def test_bytes_layer_derives_diff_id() -> None:
    raw = b"tar bytes"
    packed = gzip.compress(raw, mtime=0)
    plain = BytesLayer(raw)
    assert plain.diff_id == plain.digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    for media_type in (MT_LAYER_GZIP, MT_DOCKER_LAYER):
        layer = BytesLayer(packed, media_type)
        assert layer.digest == "sha256:" + hashlib.sha256(packed).hexdigest()
        assert layer.diff_id == plain.digest
    with pytest.raises(PackError, match="not valid gzip"):
        BytesLayer(b"nope", MT_LAYER_GZIP)
    assert isinstance(plain, Layer)
    assert plain.open().read() == raw


def test_file_blob_layer(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"blob bytes")
    digest = "sha256:" + hashlib.sha256(b"blob bytes").hexdigest()
    layer = FileBlobLayer(path, media_type=MT_LAYER_TAR, diff_id=digest)
    assert isinstance(layer, Layer)
    assert (layer.digest, layer.size, layer.diff_id) == (digest, 10, digest)
    with layer.open() as f:
        assert f.read() == b"blob bytes"
    gone = FileBlobLayer(tmp_path / "gone", media_type=MT_LAYER_TAR, diff_id=digest)
    with pytest.raises(PackError, match="gone"):
        gone.open()


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar missing")
def test_tar_layer_extracts_with_gnu_tar_from_stream(
    tmp_path: Path, tree: list[tuple[str, Path]]
) -> None:
    layer = TarLayer(entries_for_files(tree, prefix="REPO"))
    out = tmp_path / "x"
    out.mkdir()
    proc = subprocess.Popen(["tar", "-C", str(out), "-xf", "-"], stdin=subprocess.PIPE)
    assert proc.stdin is not None
    with layer.open() as f:
        shutil.copyfileobj(f, proc.stdin)
    proc.stdin.close()
    assert proc.wait() == 0
    assert (out / "REPO" / "weights.bin").read_bytes() == CONTENTS["weights.bin"]


def test_a_symlink_entry_has_no_data_and_gnu_tar_makes_the_link(tmp_path: Path) -> None:
    data = b'{"x": 1}\n'
    entries = [
        *entries_for_streams([("a/f.json", lambda: iter([data]), len(data))], prefix="REPO"),
        TarEntry("models", None, mode=LINK_MODE, linkname="REPO"),
    ]
    blob = b"".join(iter_tar(entries))
    assert len(blob) == tar_size(entries)
    assert "models" not in data_offsets(entries)
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        link = tar.getmember("models")
        assert link.issym() and link.linkname == "REPO" and link.size == 0
    (tmp_path / "blob.tar").write_bytes(blob)
    subprocess.run(["tar", "-C", str(tmp_path), "-xf", str(tmp_path / "blob.tar")], check=True)
    assert os.readlink(tmp_path / "models") == "REPO"
    assert (tmp_path / "models" / "a" / "f.json").read_bytes() == data


def test_a_chunk_stream_gives_its_source_exactly_or_fails() -> None:
    from hf2oci.oci.tarstream import ChunkStream

    stream = ChunkStream(lambda: iter([b"ab", b"", b"cde"]), 5)
    assert len(stream) == 5 and stream.read() == b"abcde"
    stream.seek(0)  # a rewind calls the source again
    assert stream.read(10) == b"abcde"
    with pytest.raises(PackError, match="gave 3 bytes, expected 5"):
        ChunkStream(lambda: iter([b"abc"]), 5).read(10)
    with pytest.raises(PackError, match="gave 3 bytes, expected 2"):
        ChunkStream(lambda: iter([b"abc"]), 2).read(10)
    long = ChunkStream(lambda: iter([b"ab", b"c"]), 2)
    assert long.read(2) == b"ab"
    with pytest.raises(PackError, match="more than the 2 bytes"):
        long.read(1)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(
                st.sampled_from(["a", "sub", "données", "é t", "x" * 99, "y" * 160]),
                min_size=1,
                max_size=4,
            ),
            st.integers(min_value=0, max_value=1 << 20),
        ),
        min_size=0,
        max_size=8,
    )
)
def test_tar_size_grown_a_file_at_a_time_is_the_archive_length(
    files: list[tuple[list[str], int]],
) -> None:
    """What the layer size limit counts: headers (PAX for long or non-ASCII names), each
    folder's entry once, data, padding and the end blocks, exactly as written."""
    sized = {"/".join(parts) + f"-{i}": size for i, (parts, size) in enumerate(files)}
    grown = TarSize("REPO")
    for path, size in sized.items():
        grown.add(path, size)
    entries = entries_for_streams(
        [(p, lambda: iter([]), n) for p, n in sized.items()], prefix="REPO"
    )
    assert grown.total == tar_size(entries)


def test_a_file_of_8_gib_or_more_has_its_size_in_a_pax_header() -> None:
    big = 8 << 30
    assert TarSize("REPO").cost("w.bin", big) - big == 3 * BLOCK + BLOCK  # pax, header, dir
    assert entry_size("REPO/w.bin", big - 1) - (big - 1) == BLOCK + 1  # header, padding
