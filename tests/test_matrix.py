"""Every way to build, as one matrix: builder × streamed/staged × destination × format × base,
on one repo of streamed files, small files, a sub-folder and non-ASCII names. Each cell reads
the files back byte for byte with a reader that is not hf2oci's, and the digest of every cell
that the design says makes the same image equals the reference's (oci builder, OCI layout).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import random
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from modelpack_client import ModelPackClient

from helpers import (
    cli,
    engine_files,
    make_project,
    read_tree,
    skopeo_inspect,
    skopeo_tags,
    tag_of,
    umoci_files,
)
from hf2oci.oci.image import MT_INDEX
from hf2oci.reference import host_platform
from servers import Registry
from test_registry import push_multi_platform_base

MiB = 1 << 20
REPO = "matrix/tiny-bert"
TAG = tag_of(REPO)


def _checkpoint() -> bytes:
    """A PyTorch zip checkpoint over the small-file limit: every cell scans a streamed (or
    staged) pickle-based file."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save({"w": torch.arange(400_000, dtype=torch.float32)}, buf)
    return buf.getvalue()


def _files() -> dict[str, bytes]:
    rng = random.Random(REPO)
    return {
        "pytorch_model.bin": _checkpoint(),
        "config.json": b'{"architectures": ["BertModel"], "hidden_size": 8}\n',
        "README.md": b"---\nlicense: mit\n---\n# tiny\n",
        # streamed (over the 1 MiB small-file limit): at the top, in a folder, non-ASCII
        "model.safetensors": rng.randbytes(3 * MiB + 17),
        "flax_model.msgpack": rng.randbytes(MiB + 5),
        "données/poids é.safetensors": rng.randbytes(2 * MiB + 1),
        # small, in a sub-folder and with non-ASCII names
        "sub/dir/vocab.txt": b"".join(b"tok%d\n" % i for i in range(500)),
        "données/é t.txt": rng.randbytes(300),
        "with space.txt": rng.randbytes(200),
    }


FILES = _files()
STREAMED = {p for p, data in FILES.items() if len(data) >= MiB}


@pytest.fixture(scope="module")
def bases(hub_server: Any, registry: Registry, busybox_base: str) -> dict[str, str]:
    """The repo on the hub, once; the bases by name: busybox (one platform), an index of two."""
    hub_server.add_repo(REPO, FILES)
    push_multi_platform_base(registry, "matrix/base")
    return {"single": busybox_base, "multi": f"{registry.host}/matrix/base:multi"}


#: the reference of each (format, base): the oci builder writing an OCI layout → (digest, layout)
_REFERENCE: dict[tuple[str, str], tuple[str, Path]] = {}


def _mirror(project: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    make_project(project, models=[REPO])
    result = cli("mirror", REPO, "--no-record", "--json", *args)
    start = 0 if result.stdout.startswith("{") else result.stdout.find("\n{")
    doc = json.loads(result.stdout[start:]) if start >= 0 else {}
    return result.exit_code, doc, result.output


def _reference(fmt: str, base: str, bases: dict[str, str], root: Path) -> tuple[str, Path]:
    if (fmt, base) not in _REFERENCE:
        tmp = root / f"{fmt}-{base}"
        code, doc, out = _mirror(
            tmp, "--builder", "oci", "--format", fmt, "--base-image", bases[base],
            "--output-dir", str(tmp / "out"), "--namespace", "ref",
        )  # fmt: skip
        assert code == 0, out
        _REFERENCE[fmt, base] = (doc["results"][0]["digest"], tmp / "out" / "ref" / "models")
    return _REFERENCE[fmt, base]


def _platform_manifest(layout: Path, platform: str) -> tuple[str, dict[str, Any]]:
    """The digest and manifest of the image at ``TAG`` in ``layout`` (of an index: of
    ``platform``'s entry)."""

    def blob(digest: str) -> dict[str, Any]:
        path = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
        return dict(json.loads(path.read_text()))

    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][-1]["digest"]
    doc = blob(digest)
    if doc.get("mediaType") == MT_INDEX:
        (digest,) = [
            m["digest"] for m in doc["manifests"]
            if f"{m['platform']['os']}/{m['platform']['architecture']}" == platform
        ]  # fmt: skip
        doc = blob(digest)
    return digest, doc


def _layout_modelpack_files(layout: Path, tag: str) -> dict[str, bytes]:
    """A ModelPack artifact in an OCI layout, read by hand from the image-layout spec: each raw
    layer's blob (its sha256 checked) under the path its annotation names."""

    def blob(digest: str) -> bytes:
        data = (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
        return data

    index = json.loads((layout / "index.json").read_text())
    (entry,) = [
        m for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    ]  # fmt: skip
    manifest = json.loads(blob(entry["digest"]))
    return {
        d["annotations"]["org.cncf.model.filepath"]: blob(d["digest"]) for d in manifest["layers"]
    }


#: builder × stream/staged × registry or local (OCI layout, the engine) × format × base
CELLS = list(
    itertools.product(
        ("oci", "docker"),
        ("stream", "staged"),
        ("registry", "local"),
        ("image", "modelpack"),
        ("single", "multi"),
    )
)


def _cell_id(cell: tuple[str, ...]) -> str:
    builder, mode, dest, fmt, base = cell
    where = dest if dest == "registry" else ("engine" if builder == "docker" else "layout")
    return "-".join((builder, mode, where, fmt, base))


@pytest.mark.parametrize("cell", CELLS, ids=[_cell_id(c) for c in CELLS])
def test_matrix(
    cell: tuple[str, str, str, str, str],
    hub: Any,
    registry: Registry,
    bases: dict[str, str],
    project: Path,
    tmp_path_factory: pytest.TempPathFactory,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    builder, mode, dest, fmt, base = cell
    # the reference is made unsigned; the cell signs what it writes (where it can)
    digest, ref_layout = _reference(fmt, base, bases, tmp_path_factory.getbasetemp() / "mx-ref")
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    monkeypatch.setenv("HF2OCI_SIGNING_KEY", key.decode())
    ns = f"mx-{_cell_id(cell)}-{uuid.uuid4().hex[:6]}"  # the engine outlives a test run
    args = [
        "--builder", builder, f"--{mode}", "--format", fmt, "--base-image", bases[base],
        "--namespace", ns, "--output-dir", str(project / "oci-images"),
    ]  # fmt: skip
    if dest == "registry":
        args += ["--registry", registry.host]
    hub.reset_log()
    caplog.set_level(logging.WARNING)
    code, doc, out = _mirror(project, *args)

    if builder == "docker" and fmt == "modelpack":  # refused on purpose, in one line
        assert code == 1, out
        assert doc["results"][0]["message"] == (
            "format modelpack makes an OCI artifact, not an image the Docker engine can load: "
            "use builder oci"
        )
        assert "Traceback" not in out and not hub.count("GET", "/resolve/")
        return
    assert code == 0, out
    (result,) = doc["results"]
    assert result["status"] == "mirrored", result
    streaming = f", streaming {len(STREAMED)} large files"
    assert (streaming in out) == (mode == "stream"), out
    assert "scan: clean (1 pickle file)" in out, out
    # the same inputs make the same image (an index on the two-platform base), whatever way;
    # the engine alone holds one platform: the index's image for this machine
    here = str(host_platform())
    if builder == "docker" and dest == "local":
        digest = _platform_manifest(ref_layout, here)[0]
    assert result["digest"] == digest
    # signed beside it wherever signatures can live (the engine alone keeps none: it says so)
    sig = digest.replace(":", "-") + ".sig"
    if builder == "docker" and dest == "local":
        assert "not signed: the Docker engine keeps no signatures" in out, out
    elif dest == "registry":
        assert sig in skopeo_tags(f"{registry.host}/{ns}/models")
    else:
        index = json.loads((project / "oci-images" / ns / "models" / "index.json").read_text())
        assert sig in {
            m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]
        }
    # and a second run finds it up to date, whatever way it was written
    _, again, out = _mirror(project, *args)
    assert [r["status"] for r in again["results"]] == ["skipped"], out

    ref = f"{registry.host}/{ns}/models:{TAG}"
    layout = project / "oci-images" / ns / "models"
    if fmt == "modelpack":
        if dest == "registry":
            ModelPackClient(insecure=True).pull(ref, project / "mp")
            got = read_tree(project / "mp")
        else:
            got = _layout_modelpack_files(layout, TAG)
        assert got == FILES
        return

    if builder == "docker":
        name = ref if dest == "registry" else f"{ns}/models:{TAG}"
        assert engine_files(name, project / "cp") == FILES
        engine_id = subprocess.run(
            ["docker", "image", "inspect", "--format", "{{.Id}}", name],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        subprocess.run(["docker", "rmi", "-f", name], capture_output=True)
        # the engine holds the reference's image for this machine: the same config
        assert engine_id == _platform_manifest(ref_layout, here)[1]["config"]["digest"]
        notes = [r.getMessage() for r in caplog.records if "one platform per tag" in r.getMessage()]
        if dest == "local" and base == "multi":  # the engine keeps one platform: it says so
            other = "linux/arm64" if here == "linux/amd64" else "linux/amd64"
            assert notes == [
                f"the Docker engine holds one platform per tag: loading {here}, skipping "
                f"{other} (set a registry to keep every platform)"
            ]
        else:
            assert notes == []
        if dest == "local":
            return
    source = f"docker://{ref}" if dest == "registry" else f"oci:{layout}:{TAG}"
    assert umoci_files(source, project / "umoci") == FILES
    manifest = skopeo_inspect(source, raw=True)
    assert (manifest["mediaType"] == MT_INDEX) == (base == "multi")
    if base == "multi":  # every platform of the base, each with the same repo layers
        platforms = [m["platform"]["architecture"] for m in manifest["manifests"]]
        assert platforms == ["amd64", "arm64"]
        layers = []
        for entry in manifest["manifests"]:
            if dest == "registry":
                at = f"docker://{registry.host}/{ns}/models@{entry['digest']}"
                one = skopeo_inspect(at, raw=True)
            else:
                blob = layout / "blobs" / "sha256" / entry["digest"].split(":", 1)[1]
                one = json.loads(blob.read_text())
            layers.append([d["digest"] for d in one["layers"][1:]])  # each base has 1 layer
        assert layers[0] == layers[1] and len(layers[0]) >= 2


#: a layer size limit that three of the streamed files are over
PARTS_LIMIT = 1200 * 1024


def _in_parts(files: dict[str, bytes], limit: int) -> dict[str, bytes]:
    """``files`` as an image carries them under ``limit``: a file over it as its parts."""
    from hf2oci.pack.formats.grouping import carry

    _, parts = carry([(p, len(d)) for p, d in files.items()], limit)
    out = {p: d for p, d in files.items() if p not in {x.path for x in parts}}
    out.update({x.name: files[x.path][x.start : x.end] for x in parts})
    return out


#: the other options, once with each builder and destination: (args, the files expected)
PREPARE = 'set -e\necho prepared > "$OUT_DIR/extra é.txt"\nrm "$OUT_DIR/with space.txt"\n'
OPTIONS: dict[str, list[str]] = {
    "dry-run": ["--dry-run"],
    "platform": ["--platform", "linux/arm64"],
    "max-layer-size": ["--max-layer-size", str(3 * MiB + 100 * 1024)],
    # files over the limit go in parts: docker cp and umoci see the parts, extract the files
    "parts": ["--max-layer-size", str(PARTS_LIMIT)],
    "prepare": [],  # get_hf/prepare.sh
    "preset": ["--preset", "safetensors"],
}
WAYS = [("oci", "registry"), ("oci", "local"), ("docker", "registry"), ("docker", "local")]


def _expected(option: str) -> dict[str, bytes]:
    if option == "prepare":
        return {
            **{p: d for p, d in FILES.items() if p != "with space.txt"},
            "extra é.txt": b"prepared\n",
        }
    if option == "preset":  # the safetensors preset keeps no other weights format
        return {
            p: d for p, d in FILES.items() if p not in ("flax_model.msgpack", "pytorch_model.bin")
        }
    if option == "parts":
        return _in_parts(FILES, PARTS_LIMIT)
    return FILES


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("way", WAYS, ids=["-".join(w) for w in WAYS])
def test_options(
    option: str, way: tuple[str, str], hub: Any, registry: Registry, bases: dict[str, str],
    project: Path,
) -> None:  # fmt: skip
    builder, dest = way
    ns = f"opt-{builder}-{dest}-{option}-{uuid.uuid4().hex[:6]}"
    base = bases["multi" if option == "platform" else "single"]
    args = ["--builder", builder, "--base-image", base, "--namespace", ns, *OPTIONS[option]]
    args += ["--output-dir", str(project / "oci-images")]
    if dest == "registry":
        args += ["--registry", registry.host]
    make_project(project, models=[REPO], prepare=PREPARE if option == "prepare" else None)
    code, doc, out = _mirror(project, *args)
    assert code == 0, out
    (result,) = doc["results"]
    ref = f"{registry.host}/{ns}/models:{TAG}"
    layout = project / "oci-images" / ns / "models"
    engine = f"{ns}/models:{TAG}" if dest == "local" else ref
    if option == "dry-run":  # planned, and nothing written anywhere
        assert result["status"] == "planned" and result["message"].startswith("would mirror 9")
        assert not hub.count("GET", "/resolve/")
        assert not layout.exists() and not skopeo_tags(f"{registry.host}/{ns}/models")
        gone = subprocess.run(["docker", "image", "inspect", engine], capture_output=True)
        assert gone.returncode != 0
        return
    assert result["status"] == "mirrored", result
    if builder == "docker":
        got = engine_files(engine, project / "cp")
        arch = subprocess.run(
            ["docker", "image", "inspect", "--format", "{{.Architecture}}", engine],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        subprocess.run(["docker", "rmi", "-f", engine], capture_output=True)
        assert got == _expected(option)
        assert arch == ("arm64" if option == "platform" else str(host_platform().architecture))
        if dest == "local":
            return
    source = f"docker://{ref}" if dest == "registry" else f"oci:{layout}:{TAG}"
    if option == "platform":  # one platform asked for: one manifest, not an index
        assert skopeo_inspect(source, raw=True)["mediaType"] != MT_INDEX
        assert skopeo_inspect(source, config=True)["architecture"] == "arm64"
        return
    assert umoci_files(source, project / "umoci") == _expected(option)
    if option == "max-layer-size":
        sizes = [d["size"] for d in skopeo_inspect(source, raw=True)["layers"][1:]]
        assert max(sizes) <= 3 * MiB + 100 * 1024 and len(sizes) >= 3
    if option == "parts":  # every layer within the limit, and extract puts the files back
        sizes = [d["size"] for d in skopeo_inspect(source, raw=True)["layers"][1:]]
        assert max(sizes) <= PARTS_LIMIT and len(_expected(option)) == len(FILES) + 4
        image = ref if dest == "registry" else f"oci:{layout}:{TAG}"
        r = cli("extract", image, str(project / "x"))
        assert r.exit_code == 0, r.output
        assert read_tree(project / "x") == FILES
