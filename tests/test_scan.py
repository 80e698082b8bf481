"""The pickle scan on the way in: real pickles (torch, numpy) read by picklescan, refusals that
publish nothing, warnings that are recorded, the hub's own verdict, streamed files scanned by
Range reads."""

from __future__ import annotations

import io
import json
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import HfApi

from helpers import cli, make_project, skopeo_inspect, tag_of, umoci_files
from hf2oci import labels as L
from hf2oci.config import Config, load_config
from hf2oci.errors import ConfigError, ScanRefused
from hf2oci.intake.hub import HubFile, RepoState
from hf2oci.intake.scan import FileVerdict, ScanReport, scan_files, scan_one, whole_read
from hf2oci.pack.plan import decide
from hf2oci.spec import RepoSpec

MiB = 1 << 20


class _Evil:
    """Runs a shell command when unpickled (what ``torch.load`` of a hostile file does)."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch /tmp/hf2oci-pwned",))


class _Exec:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, ("import os",))


def _torch(obj: object, *, legacy: bool = False) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


CASES = {
    "evil.pkl": (pickle.dumps(_Evil()), "dangerous", ("posix.system",)),
    "exec.pkl": (pickle.dumps(_Exec()), "dangerous", ("builtins.exec",)),
    "plain.pkl": (pickle.dumps({"a": [1, 2.5, "x"]}), "clean", ()),
    "protocol0.pkl": (pickle.dumps({"a": 1}, protocol=0), "clean", ()),
    "pytorch_model.bin": (_torch({"w": torch.zeros(4)}), "clean", ()),
    "evil_zip.bin": (_torch({"w": torch.zeros(4), "x": _Evil()}), "dangerous", ("posix.system",)),
    "legacy.pt": (_torch({"w": torch.ones(3)}, legacy=True), "clean", ()),
    "legacy_evil.ckpt": (_torch({"x": _Exec()}, legacy=True), "dangerous", ("__builtin__.exec",)),
    "array.npy": (_npy(np.arange(10)), "not-a-pickle", ()),
    "objects.npy": (_npy(np.array([_Evil()], dtype=object)), "dangerous", ("posix.system",)),
    "arrays.npz": (_npz(a=np.zeros(3)), "clean", ()),
    "hidden.npz": (
        _npz(a=np.zeros(3), o=np.array([_Evil()], dtype=object)),
        "dangerous",
        ("posix.system",),
    ),
    "raw_tensors.bin": (bytes(random.Random(1).randbytes(4096)), "not-a-pickle", ()),
    "fasttext.bin": (b"\xba\x16\x4f\x2f" + bytes(1000), "not-a-pickle", ()),
    "empty.bin": (b"", "not-a-pickle", ()),
    "truncated.pkl": (pickle.dumps(list(range(1000)))[:500], "unparsed", ()),
    "broken.bin": (b"\x80\x04\xbb" + bytes(100), "unparsed", ()),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_kind_of_file_gets_its_verdict(name: str) -> None:
    data, verdict, imports = CASES[name]
    got = scan_one(name, io.BufferedReader(io.BytesIO(data)))  # type: ignore[arg-type]
    assert (got.verdict, got.imports) == (verdict, imports), got


def test_a_huge_pickle_inside_a_zip_is_a_finding_not_a_memory_blowup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hf2oci.intake import scan

    monkeypatch.setattr(scan, "MAX_PICKLE", 64)  # our own cap, lowered for a small file
    data = CASES["pytorch_model.bin"][0]
    got = scan_one("big.bin", io.BufferedReader(io.BytesIO(data)))  # type: ignore[arg-type]
    assert got.verdict == "unparsed" and "data.pkl inside is a pickle of" in got.detail, got


def test_a_raw_pickle_over_the_cap_is_a_finding_and_a_big_non_pickle_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A raw pickle bigger than the scanner's cap is not handed to it (picklescan keeps every
    opcode and argument in memory): a finding naming the size. A file over the cap that is no
    pickle (raw tensors, fastText) is still only "not a pickle"."""
    import pickle

    from hf2oci.intake import scan

    monkeypatch.setattr(scan, "MAX_PICKLE", 1 << 20)  # our own cap, lowered for a small file
    big = pickle.dumps({"weights": [bytes([i]) * (1 << 16) for i in range(20)]}, protocol=4)
    got = scan_one("model.pkl", io.BufferedReader(io.BytesIO(big)))  # type: ignore[arg-type]
    assert got.verdict == "unparsed" and f"a pickle of {len(big)} bytes" in got.detail, got
    assert "1 MiB" in got.detail
    small = pickle.dumps({"weights": [bytes(1 << 10)]}, protocol=4)
    got = scan_one("model.pkl", io.BufferedReader(io.BytesIO(small)))  # type: ignore[arg-type]
    assert got.verdict == "clean", got
    raw = b"\xba\x16\x4f\x2f" + bytes(2 << 20)  # fastText's magic, then 2 MiB
    got = scan_one("model.bin", io.BufferedReader(io.BytesIO(raw)))  # type: ignore[arg-type]
    assert got.verdict == "not-a-pickle", got


def test_read_by_range_a_big_member_is_opened_only_when_named_as_a_pickle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On disk every member's first bytes are checked (picklescan's rule); by Range reads a big
    member not named as a pickle is not (no loader unpickles it, and each would cost a
    request); one named as a pickle always is."""
    import zipfile

    from hf2oci.intake import scan

    monkeypatch.setattr(scan, "RANGED_HEAD_LIMIT", 1000)
    hidden = pickle.dumps(_Evil()) + bytes(2000)  # a pickle under a storage's name
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"a": 1}))
        z.writestr("archive/data/0", hidden)
    data = buf.getvalue()

    def verdict(ranged: bool) -> FileVerdict:
        return scan_one("m.bin", io.BufferedReader(io.BytesIO(data)), ranged=ranged)  # type: ignore[arg-type]

    assert verdict(False).verdict == "dangerous"
    assert verdict(True).verdict == "clean"
    named = io.BytesIO()
    with zipfile.ZipFile(named, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(_Evil()) + bytes(2000))
    got = scan_one("n.bin", io.BufferedReader(io.BytesIO(named.getvalue())), ranged=True)  # type: ignore[arg-type]
    assert got.verdict == "dangerous"


def test_only_raw_pickles_need_a_whole_read() -> None:
    assert whole_read(pickle.dumps({"a": 1}))
    assert not whole_read(CASES["pytorch_model.bin"][0][:16])  # zip: its directory is at the end
    assert not whole_read(CASES["legacy.pt"][0][:16])  # legacy: its pickles come first
    assert not whole_read(CASES["array.npy"][0][:16])
    assert not whole_read(b"\xba\x16\x4f\x2f" + bytes(12))


def test_a_refusal_is_one_line_naming_file_and_import_and_the_way_out() -> None:
    report = ScanReport(
        "refuse",
        (
            FileVerdict("pytorch_model.bin", "dangerous", ("posix.system",)),
            FileVerdict("tokenizer.bin", "not-a-pickle"),
            FileVerdict("extra.pkl", "unparsed", detail="pickle exhausted before seeing STOP"),
        ),
    )
    with pytest.raises(ScanRefused) as e:
        report.check("acme/evil")
    line = str(e.value)
    assert "\n" not in line
    assert line.startswith(
        "acme/evil: pytorch_model.bin imports posix.system: refused (scan: refuse)"
    )
    assert "(and 1 more)" in line and "preset=safetensors" in line
    warned = ScanReport("warn", report.files)
    warned.check("acme/evil")  # warn publishes
    assert warned.summary == (
        "warn: pytorch_model.bin imports posix.system; extra.pkl is a pickle the scanner cannot "
        "read (pickle exhausted before seeing STOP)"
    )
    clean = ScanReport(
        "refuse", (FileVerdict("a.bin", "clean"), FileVerdict("b.bin", "not-a-pickle"))
    )
    assert clean.summary == "clean (1 pickle file, 1 not a pickle)"
    assert json.loads(clean.details()) == {
        "a.bin": {"verdict": "clean"},
        "b.bin": {"verdict": "not-a-pickle"},
    }
    # the hub's own "unsafe" is a finding even where ours is clean
    hub_says = ScanReport("refuse", (FileVerdict("a.bin", "clean", hub="unsafe"),))
    with pytest.raises(ScanRefused, match=r"a\.bin: the hub's own scan says unsafe"):
        hub_says.check("acme/x")


def test_off_scans_nothing_and_says_so() -> None:
    def never(_path: str):  # type: ignore[no-untyped-def]
        raise AssertionError("opened a file with scan: off")

    report = scan_files(["a.bin", "config.json"], never, "off")
    assert report.summary == "off (1 pickle file not scanned)"


def test_the_policy_is_a_setting_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("namespace: x\nscan: off\n")  # YAML reads a bare off as false
    assert load_config(path).scan == "off"
    assert Config().scan == "refuse"
    path.write_text("namespace: x\nscan: maybe\n")
    with pytest.raises(
        ConfigError, match=r"config.yaml:2: invalid scan 'maybe': choose one of refuse, warn, off"
    ):
        load_config(path)


def _state(files: dict[str, int]) -> RepoState:
    return RepoState(
        "acme/m", "model", "main", "a" * 40,
        tuple(HubFile(p, n) for p, n in files.items()), "2026-01-01T00:00:00Z",
    )  # fmt: skip


def test_an_image_made_unscanned_is_made_again_once_scanning_is_on() -> None:
    spec = RepoSpec("acme/m", "model")
    state = _state({"config.json": 10, "pytorch_model.bin": 100})
    current = {L.REVISION: state.commit, L.FILTER: spec.filter_key, L.REF: "main"}
    again = decide(spec, state, current, scan="refuse")
    assert again.kind == "mirror" and "not scanned yet" in again.reason
    assert decide(spec, state, current, scan="off").kind == "skip"
    scanned = {**current, L.SCAN: "clean (1 pickle file)"}
    assert decide(spec, state, scanned, scan="refuse").kind == "skip"
    # no pickle-based file: nothing to scan, nothing to redo
    safe = _state({"config.json": 10, "model.safetensors": 100})
    assert decide(spec, safe, current, scan="refuse").kind == "skip"


# -- through the pipeline: the test hub, OCI layouts (no engine) -------------------------------


def _layout(project: Path, ns: str) -> Path:
    return project / "oci-images" / ns / "models"


def _tags(layout: Path) -> set[str]:
    index = layout / "index.json"
    if not index.exists():
        return set()
    doc = json.loads(index.read_text())
    return {
        m.get("annotations", {}).get("org.opencontainers.image.ref.name") for m in doc["manifests"]
    }


def test_a_dangerous_pickle_refuses_its_repo_only_and_nothing_of_it_is_published(
    hub, project: Path
) -> None:
    hub.add_repo("scan/evil", {"config.json": b"{}", "pytorch_model.bin": CASES["evil_zip.bin"][0]})
    hub.add_repo(
        "scan/fine", {"config.json": b"{}", "pytorch_model.bin": CASES["pytorch_model.bin"][0]}
    )
    make_project(project, models=["scan/evil", "scan/fine"],
                 config={"namespace": "refuse", "base_image": "scratch"})  # fmt: skip
    result = cli("sync")
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if "refused" in line]
    assert any(
        "scan/evil: pytorch_model.bin imports posix.system: refused (scan: refuse)" in line
        for line in lines
    ), result.output
    assert "Traceback" not in result.output
    layout = _layout(project, "refuse")
    assert _tags(layout) == {
        tag_of("scan/fine"),
        f"{tag_of('scan/fine')}--{_sha(hub, 'scan/fine')[:12]}",
    }
    ledger = json.loads((project / "get_hf" / "mirrored.json").read_text())
    assert set(ledger["models"]) == {"scan/fine"}
    assert ledger["models"]["scan/fine"]["scan"] == "clean (1 pickle file)"
    assert "clean (1 pickle file)" in (project / "models.md").read_text()
    assert not Path("/tmp/hf2oci-pwned").exists()


def _sha(hub, repo_id: str) -> str:  # type: ignore[no-untyped-def]
    return str(HfApi(endpoint=hub.url).model_info(repo_id).sha)


def test_warn_publishes_and_records_the_finding_everywhere(
    hub, project: Path, tmp_path: Path
) -> None:
    files = {"config.json": b"{}", "pytorch_model.bin": CASES["evil_zip.bin"][0],
             "extra/tokenizer.bin": b"\xba\x16\x4f\x2f" + bytes(100)}  # fmt: skip
    hub.add_repo("scan/warned", files)
    make_project(
        project, models=["scan/warned"], config={"namespace": "warn", "base_image": "scratch"}
    )
    result = cli("sync", "--scan", "warn", "-q")
    assert result.exit_code == 0, result.output
    layout = _layout(project, "warn")
    labels = skopeo_inspect(f"oci:{layout}:{tag_of('scan/warned')}")["Labels"]
    assert labels[L.SCAN] == "warn: pytorch_model.bin imports posix.system"
    assert json.loads(labels[L.SCAN_FILES]) == {
        "pytorch_model.bin": {"verdict": "dangerous", "imports": ["posix.system"]},
        "extra/tokenizer.bin": {"verdict": "not-a-pickle"},
    }
    entry = json.loads((project / "get_hf" / "mirrored.json").read_text())["models"]["scan/warned"]
    assert entry["scan"] == labels[L.SCAN]
    page = (project / "models.md").read_text()
    assert "| pickle scan |" in page and "warn: pytorch_model.bin imports posix.system" in page
    assert umoci_files(f"oci:{layout}:{tag_of('scan/warned')}", tmp_path / "x") == files
    # the same repo with scanning off: nothing scanned, and the label says so
    make_project(
        project, models=["scan/warned"], config={"namespace": "off", "base_image": "scratch"}
    )
    assert cli("sync", "--scan", "off", "-q").exit_code == 0
    off = skopeo_inspect(f"oci:{_layout(project, 'off')}:{tag_of('scan/warned')}")["Labels"]
    assert off[L.SCAN] == "off (2 pickle files not scanned)"


def test_the_hubs_own_verdict_is_kept_and_unsafe_refuses(hub, project: Path) -> None:
    blob = CASES["pytorch_model.bin"][0]  # our scan finds it clean
    hub.add_repo("scan/hub-unsafe", {"pytorch_model.bin": blob})
    hub.add_repo("scan/hub-safe", {"pytorch_model.bin": blob})
    hub.set_security("scan/hub-unsafe", "pytorch_model.bin", "unsafe",
                     imports=(("builtins", "eval", "dangerous"),))  # fmt: skip
    hub.set_security("scan/hub-safe", "pytorch_model.bin", "safe")
    # what huggingface_hub itself reads from the test hub's answer
    info = HfApi(endpoint=hub.url).get_paths_info(
        "scan/hub-unsafe", ["pytorch_model.bin"], expand=True
    )
    assert info[0].security is not None and info[0].security.status == "unsafe"
    make_project(project, models=["scan/hub-unsafe", "scan/hub-safe"],
                 config={"namespace": "hubsays", "base_image": "scratch"})  # fmt: skip
    result = cli("sync")
    assert result.exit_code == 1
    assert (
        "scan/hub-unsafe: pytorch_model.bin: the hub's own scan says unsafe: refused"
        in result.output
    )
    labels = skopeo_inspect(f"oci:{_layout(project, 'hubsays')}:{tag_of('scan/hub-safe')}")[
        "Labels"
    ]
    assert json.loads(labels[L.SCAN_FILES]) == {
        "pytorch_model.bin": {"verdict": "clean", "hub": "safe"}
    }


def test_a_streamed_checkpoint_is_scanned_by_small_range_reads(
    hub, project: Path, tmp_path: Path
) -> None:
    # 12 tensors of 2 MiB: a zip checkpoint well over the small-file limit, so it streams
    tensors = {f"layer{i}": torch.full((MiB // 2,), float(i)) for i in range(12)}
    blob = _torch(tensors)
    assert len(blob) > 24 * MiB
    hub.add_repo("scan/streamed", {"config.json": b"{}", "pytorch_model.bin": blob})
    make_project(
        project, models=["scan/streamed"], config={"namespace": "st", "base_image": "scratch"}
    )
    hub.reset_log()
    result = cli("sync")
    assert result.exit_code == 0, result.output
    assert "streaming 1 large files" in result.output
    read = [line for line in result.output.splitlines() if "scan: clean (1 pickle file)" in line]
    assert read, result.output
    assert read[0].endswith(" KiB read)"), read  # the directory, the members' heads, data.pkl
    assert float(read[0].rsplit("(", 1)[1].split()[0]) < 512, read
    # one full read of the file (the stream); everything else were Range reads
    assert (
        umoci_files(f"oci:{_layout(project, 'st')}:{tag_of('scan/streamed')}", tmp_path / "x")[
            "pytorch_model.bin"
        ]
        == blob
    )


def test_a_large_raw_pickle_is_downloaded_once_and_scanned_on_disk(hub, project: Path) -> None:
    payload = {"weights": random.Random(3).randbytes(3 * MiB), "hook": _Evil()}
    hub.add_repo("scan/raw-large", {"model.pkl": pickle.dumps(payload)})
    make_project(
        project, models=["scan/raw-large"], config={"namespace": "raw", "base_image": "scratch"}
    )
    hub.reset_log()
    result = cli("sync")
    assert result.exit_code == 1
    assert "model.pkl imports posix.system: refused" in result.output
    assert "streaming" not in result.output  # not streamed: scanned from its one download
    full = [p for m, p in hub.requests if m == "GET" and "model.pkl" in p]
    assert len(full) == 2, full  # a 16-byte peek, then the download
    assert not _tags(_layout(project, "raw"))


def test_the_hook_never_runs_on_a_refused_repo(hub, project: Path) -> None:
    hub.add_repo("scan/hooked", {"model.pkl": pickle.dumps(_Evil())})
    marker = project / "hook-ran"
    hook = f'#!/bin/sh\ntouch "{marker}"\ncp -r "$SRC_DIR"/. "$OUT_DIR"/\n'
    config = {"namespace": "hook", "base_image": "scratch"}
    make_project(project, models=["scan/hooked"], config=config, prepare=hook)
    result = cli("sync")
    assert result.exit_code == 1 and "refused (scan: refuse)" in result.output
    assert not marker.exists()
