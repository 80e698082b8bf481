"""Image assembly and OCI layouts, checked with umoci and skopeo."""

from __future__ import annotations

import gzip
import io
import json
import multiprocessing
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from hf2oci.errors import DigestMismatch, PackError
from hf2oci.oci import layout
from hf2oci.oci.blobs import FileBlobLayer, TarLayer
from hf2oci.oci.image import (
    MT_CONFIG,
    MT_DOCKER_LAYER,
    MT_LAYER_GZIP,
    MT_LAYER_TAR,
    MT_MANIFEST,
    SCRATCH,
    Image,
    assemble,
    sha256_digest,
)
from hf2oci.oci.source import open_image
from hf2oci.oci.tarstream import entries_for_files
from layers import BytesLayer, base_image

CREATED = "2024-05-01T12:00:00Z"
BIG = "w" * 120 + "/" + "model-00001-of-00002 " * 5 + ".safetensors"
FILES: dict[str, bytes] = {
    "config.json": b'{"model_type": "bert"}\n',
    "sub/données/é t.txt": "é\n".encode(),
    BIG: os.urandom(200_000),
    "tokenizer.json": b"{}\n",
}

needs_tools = pytest.mark.skipif(
    not (shutil.which("umoci") and shutil.which("skopeo")), reason="umoci and skopeo needed"
)


def busybox_tar() -> bytes:
    """A tiny deterministic root filesystem: /bin/busybox and /bin/sh → busybox."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name in ("bin", "tmp"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(info)
        data = Path("/bin/busybox").read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        tf.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("bin/sh")
        info.type, info.linkname = tarfile.SYMTYPE, "busybox"
        tf.addfile(info)
    return buf.getvalue()


def busybox_base(*, docker_gzip: bool = False) -> Image:
    raw = busybox_tar()
    layer = (
        BytesLayer(gzip.compress(raw, mtime=0), MT_DOCKER_LAYER) if docker_gzip else BytesLayer(raw)
    )
    config = {
        "architecture": "amd64",
        "os": "linux",
        "container": "abc",  # Docker-only keys are dropped
        "config": {"Cmd": ["sh"], "Labels": {"base": "yes", "shared": "base"}},
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(raw)]},
        "history": [{"created": "2020-01-01T00:00:00Z", "created_by": "busybox"}],
    }
    return base_image([layer], config, name="local/busybox:1")


def write_files(root: Path, files: dict[str, bytes] = FILES) -> list[tuple[str, Path]]:
    out = []
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out.append((rel, path))
    return out


def build(
    root: Path, base: Image = SCRATCH, files: dict[str, bytes] = FILES, **labels: str
) -> Image:
    """Two layers, as the packer does: the small files together, the big one alone."""
    pairs = write_files(root, files)
    small = [(r, p) for r, p in pairs if len(files[r]) < 100_000]
    large = [(r, p) for r, p in pairs if len(files[r]) >= 100_000]
    layers = [TarLayer(entries_for_files(group)) for group in (small, large) if group]
    all_labels = {"org.opencontainers.image.title": "org/model", "shared": "ours", **labels}
    return assemble(base, layers, labels=all_labels, annotations=all_labels, created=CREATED)


def blob_files(path: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in (path / "blobs").rglob("*")}


def run(*cmd: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd}: {proc.stderr}"
    return proc.stdout


def unpack(image_dir: Path, tag: str, dest: Path) -> Path:
    cmd = ["umoci", "raw", "unpack", "--image", f"{image_dir}:{tag}", str(dest)]
    if os.geteuid() != 0:
        cmd.insert(3, "--rootless")
    run(*cmd)
    return dest


def tree_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# --- assemble ----------------------------------------------------------------------------------


def test_assemble_is_deterministic(tmp_path: Path) -> None:
    one = build(tmp_path / "a", busybox_base())
    two = build(tmp_path / "b", busybox_base())
    assert one.manifest == two.manifest and one.config == two.config
    assert one.digest == two.digest
    assert build(tmp_path / "c", busybox_base(), extra="1").digest != one.digest


def test_assemble_config_and_manifest(tmp_path: Path) -> None:
    base = busybox_base()
    image = build(tmp_path, base)
    config = image.config_doc
    assert (config["architecture"], config["os"], config["created"]) == ("amd64", "linux", CREATED)
    assert "container" not in config
    assert config["config"]["Cmd"] == ["sh"]
    labels = config["config"]["Labels"]
    assert labels["base"] == "yes" and labels["shared"] == "ours"
    diff_ids = config["rootfs"]["diff_ids"]
    assert diff_ids == [layer.diff_id for layer in image.layers]
    assert diff_ids[0] == base.config_doc["rootfs"]["diff_ids"][0]
    assert [h["created_by"] for h in config["history"]] == ["busybox", "hf2oci", "hf2oci"]
    assert config["history"][1]["created"] == CREATED

    manifest = image.manifest_doc
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == MT_MANIFEST
    assert manifest["config"] == {
        "mediaType": MT_CONFIG,
        "digest": image.config_digest,
        "size": len(image.config),
    }
    assert manifest["annotations"]["org.opencontainers.image.title"] == "org/model"
    assert [d.digest for d in image.layer_descriptors] == [la.digest for la in image.layers]
    assert [d.size for d in image.layer_descriptors] == [la.size for la in image.layers]
    assert {d.media_type for d in image.layer_descriptors} == {MT_LAYER_TAR}
    # canonical JSON: sorted keys, no spaces
    assert (
        image.manifest
        == json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )


def test_docker_base_layers_get_oci_media_types(tmp_path: Path) -> None:
    image = build(tmp_path, busybox_base(docker_gzip=True))
    types = [d.media_type for d in image.layer_descriptors]
    assert types == [MT_LAYER_GZIP, MT_LAYER_TAR, MT_LAYER_TAR]


def test_assemble_layer_annotations_and_errors(tmp_path: Path) -> None:
    layer = BytesLayer(busybox_tar())
    image = assemble(
        SCRATCH,
        [layer],
        labels={},
        annotations={},
        created=CREATED,
        layer_annotations=[{"org.example.files": "1"}],
        history_comment="hf2oci pack org/model",
    )
    assert image.manifest_doc["layers"][0]["annotations"] == {"org.example.files": "1"}
    assert "annotations" not in image.manifest_doc
    assert image.config_doc["history"] == [
        {"created": CREATED, "created_by": "hf2oci pack org/model"}
    ]
    with pytest.raises(PackError, match="layer annotations"):
        assemble(SCRATCH, [layer], labels={}, annotations={}, created=CREATED,
                 layer_annotations=[])  # fmt: skip
    broken = base_image([layer], SCRATCH.config_doc, name="broken")
    with pytest.raises(PackError, match="broken"):
        assemble(broken, [], labels={}, annotations={}, created=CREATED)


# --- layouts -----------------------------------------------------------------------------------


@needs_tools
def test_layout_accepted_by_umoci_and_skopeo(tmp_path: Path) -> None:
    image = build(tmp_path / "src", busybox_base())
    oci = tmp_path / "oci-images" / "hgfkeep" / "models"
    layout.write_layout(image, oci, tags=["org--model", "org--model-r1"])

    assert json.loads((oci / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = layout.read_index(oci)
    assert [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]] == [
        "org--model",
        "org--model-r1",
    ]
    stat = run("umoci", "stat", "--image", f"{oci}:org--model", "--json")
    assert len(json.loads(stat)["history"]) == 3

    inspect = json.loads(run("skopeo", "inspect", f"oci:{oci}:org--model-r1"))
    assert inspect["Digest"] == image.digest
    assert inspect["Labels"]["shared"] == "ours"
    assert inspect["Layers"] == [layer.digest for layer in image.layers]

    copied = tmp_path / "copied"
    run("skopeo", "copy", f"oci:{oci}:org--model", f"dir:{copied}")
    assert (copied / "manifest.json").read_bytes() == image.manifest
    for layer in image.layers:
        blob = (copied / layer.digest.split(":")[1]).read_bytes()
        assert blob == layout.blob_path(oci, layer.digest).read_bytes()
        assert sha256_digest(blob) == layer.digest
    assert (copied / image.config_digest.split(":")[1]).read_bytes() == image.config

    rootfs = unpack(oci, "org--model", tmp_path / "bundle")
    assert tree_of(rootfs / "REPO") == FILES
    assert (rootfs / "bin" / "busybox").read_bytes() == Path("/bin/busybox").read_bytes()
    assert os.readlink(rootfs / "bin" / "sh") == "busybox"


@needs_tools
def test_docker_gzip_base_unpacks(tmp_path: Path) -> None:
    image = build(tmp_path / "src", busybox_base(docker_gzip=True))
    oci = tmp_path / "layout"
    layout.write_layout(image, oci, tags=["gz"])
    rootfs = unpack(oci, "gz", tmp_path / "bundle")
    assert (rootfs / "bin" / "busybox").exists()
    assert tree_of(rootfs / "REPO") == FILES


@needs_tools
def test_many_images_share_one_layout(tmp_path: Path) -> None:
    base = busybox_base()
    a = build(tmp_path / "a", base)
    b_files = {**FILES, "config.json": b'{"model_type": "gpt2"}\n'}
    b = build(tmp_path / "b", base, b_files, **{"org.opencontainers.image.title": "org/b"})
    oci = tmp_path / "models"
    layout.write_layout(a, oci, tags=["org--a"])
    layout.write_layout(b, oci, tags=["org--b", "latest"])
    assert layout.resolve_tag(oci, "org--a").digest == a.digest  # type: ignore[union-attr]
    assert layout.resolve_tag(oci, "org--b").digest == b.digest  # type: ignore[union-attr]
    assert layout.resolve_tag(oci, "missing") is None
    # the base layer and the big weights layer are stored once
    blobs = {p.name for p in (oci / "blobs" / "sha256").iterdir()}
    expected = {d.split(":")[1] for img in (a, b) for d in (img.digest, img.config_digest)}
    expected |= {layer.digest.split(":")[1] for img in (a, b) for layer in img.layers}
    assert blobs == expected
    assert len(expected) == 2 * 2 + 4  # base + weights shared; small-files layers differ
    # readable by every user, as skopeo and umoci write them: a server running as another
    # user (the serve image's 65532) reads a layout mounted into it
    unreadable = [p for p in oci.rglob("*") if p.is_file() and p.stat().st_mode & 0o044 != 0o044]
    assert not unreadable
    for tag, files in (("org--a", FILES), ("org--b", b_files)):
        inspect = json.loads(run("skopeo", "inspect", f"oci:{oci}:{tag}"))
        assert inspect["Digest"] == layout.resolve_tag(oci, tag).digest  # type: ignore[union-attr]
        assert tree_of(unpack(oci, tag, tmp_path / f"u-{tag}") / "REPO") == files

    # moving a tag keeps the others, one entry per tag
    layout.write_layout(a, oci, tags=["latest"])
    refs = [
        m["annotations"]["org.opencontainers.image.ref.name"]
        for m in layout.read_index(oci)["manifests"]
    ]
    assert sorted(refs) == ["latest", "org--a", "org--b"]
    assert layout.resolve_tag(oci, "latest").digest == a.digest  # type: ignore[union-attr]
    assert layout.resolve_tag(oci, "org--b").digest == b.digest  # type: ignore[union-attr]


def test_rewriting_the_same_image_changes_nothing(tmp_path: Path) -> None:
    image = build(tmp_path / "src", busybox_base())
    oci = tmp_path / "layout"
    layout.write_layout(image, oci, tags=["t"])
    before = blob_files(oci)
    index_before = (oci / "index.json").stat().st_mtime_ns, (oci / "index.json").read_bytes()
    again = build(tmp_path / "src2", busybox_base())
    layout.write_layout(again, oci, tags=["t"])
    assert blob_files(oci) == before
    assert ((oci / "index.json").stat().st_mtime_ns, (oci / "index.json").read_bytes()) == (
        index_before
    )
    assert not [p for p in oci.rglob("*.tmp")]


def test_read_image_round_trip(tmp_path: Path) -> None:
    image = build(tmp_path / "src", busybox_base())
    first = tmp_path / "first"
    layout.write_layout(image, first, tags=["t"])
    back = open_image(f"oci:{first}:t")
    assert (back.manifest, back.config, back.digest) == (image.manifest, image.config, image.digest)
    assert all(isinstance(layer, FileBlobLayer) for layer in back.layers)
    assert [(la.digest, la.diff_id, la.size, la.media_type) for la in back.layers] == [
        (la.digest, la.diff_id, la.size, la.media_type) for la in image.layers
    ]
    # a read image is a source like any other: copy it into a second layout
    second = tmp_path / "second"
    layout.write_layout(back, second, tags=["copy"])
    assert open_image(f"oci:{second}:copy").digest == image.digest
    assert tree_of(second / "blobs") == tree_of(first / "blobs")


def test_corrupt_source_raises_and_leaves_no_blob(tmp_path: Path) -> None:
    pairs = write_files(tmp_path / "src")
    layer = TarLayer(entries_for_files(pairs))
    image = assemble(SCRATCH, [layer], labels={}, annotations={}, created=CREATED)
    assert image.digest  # the manifest is made now: the layer is hashed
    # the file changes after hashing, keeping its size: the bytes no longer match the digest
    dict(pairs)[BIG].write_bytes(os.urandom(len(FILES[BIG])))
    oci = tmp_path / "layout"
    with pytest.raises(DigestMismatch, match=layer.digest):
        layout.write_layout(image, oci, tags=["t"])
    assert list((oci / "blobs" / "sha256").iterdir()) == []
    assert not (oci / "index.json").exists()

    lying = BytesLayer(b"abc", MT_LAYER_TAR, diff_id="sha256:" + "0" * 64)
    wrong = TarLayer(entries_for_files(pairs[:1]), digest="sha256:" + "1" * 64)
    image = assemble(SCRATCH, [lying, wrong], labels={}, annotations={}, created=CREATED)
    with pytest.raises(DigestMismatch, match="1111"):
        layout.write_layout(image, oci, tags=["t"])
    assert [p.name for p in (oci / "blobs" / "sha256").iterdir()] == [lying.digest.split(":")[1]]


def test_file_changing_size_during_write_raises(tmp_path: Path) -> None:
    pairs = write_files(tmp_path / "src")
    layer = TarLayer(entries_for_files(pairs))
    image = assemble(SCRATCH, [layer], labels={}, annotations={}, created=CREATED)
    with pairs[0][1].open("ab") as f:
        f.write(b"appended")
    oci = tmp_path / "layout"
    with pytest.raises(PackError, match="changed size"):
        layout.write_layout(image, oci, tags=["t"])
    assert list((oci / "blobs" / "sha256").iterdir()) == []


def test_layout_errors(tmp_path: Path) -> None:
    image = assemble(SCRATCH, [BytesLayer(b"x")], labels={}, annotations={}, created=CREATED)
    oci = tmp_path / "layout"
    with pytest.raises(PackError, match="invalid tag"):
        layout.write_layout(image, oci, tags=["bad/tag"])
    with pytest.raises(PackError, match="no tag"):
        layout.write_layout(image, oci, tags=[])
    with pytest.raises(PackError, match="not an OCI image layout"):
        layout.read_index(tmp_path / "nowhere")
    layout.write_layout(image, oci, tags=["ok"])
    with pytest.raises(PackError, match="no image tagged 'other'"):
        open_image(f"oci:{oci}:other")
    with pytest.raises(PackError, match="invalid digest"):
        layout.blob_path(oci, "sha256:../../etc")
    layout.blob_path(oci, image.digest).write_bytes(b"{}")
    with pytest.raises(DigestMismatch, match="corrupt"):
        open_image(f"oci:{oci}:ok")
    (oci / "index.json").write_text("not json")
    with pytest.raises(PackError, match=r"index\.json.*not valid JSON"):
        layout.resolve_tag(oci, "ok")


def _writer(oci: str, prefix: str, count: int) -> None:
    for i in range(count):
        image = assemble(
            SCRATCH,
            [BytesLayer(f"{prefix}{i}".encode())],
            labels={},
            annotations={},
            created=CREATED,
        )
        layout.write_layout(image, Path(oci), tags=[f"{prefix}-{i}"])


def test_concurrent_writers_lose_no_tag(tmp_path: Path) -> None:
    oci = tmp_path / "layout"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(oci), p, 25)) for p in "abcd"]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    refs = {
        m["annotations"]["org.opencontainers.image.ref.name"]
        for m in layout.read_index(oci)["manifests"]
    }
    assert refs == {f"{p}-{i}" for p in "abcd" for i in range(25)}
