"""Helpers for end-to-end tests: a project folder, running the CLI, reading images back."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner, Result

from hf2oci.cli import main


def make_project(
    root: Path,
    *,
    models: Sequence[str] = (),
    datasets: Sequence[str] = (),
    config: Mapping[str, Any] | None = None,
    prepare: str | None = None,
) -> Path:
    get_hf = root / "get_hf"
    get_hf.mkdir(parents=True, exist_ok=True)
    (get_hf / "to_get_models.txt").write_text("".join(f"{m}\n" for m in models))
    (get_hf / "to_get_datasets.txt").write_text("".join(f"{d}\n" for d in datasets))
    if config is not None:
        (get_hf / "config.yaml").write_text(yaml.safe_dump(dict(config)))
    if prepare is not None:
        (get_hf / "prepare.sh").write_text(prepare)
    return root


def unnumbered_name(i: int) -> str:
    """A file name without a digit (its hash's digits turned to letters): grouped as a file
    that is not a shard."""
    letters = str.maketrans("0123456789", "ghijklmnop")
    return f"w/{hashlib.sha256(b'%d' % i).hexdigest()[:12].translate(letters)}.st"


def tag_of(repo_id: str) -> str:
    """The moving tag of a repo's image, written out here (test_naming checks the rule)."""
    return repo_id.replace("/", "--")


def run_json(code: str, *args: str, env: dict[str, str], timeout: float = 300) -> Any:
    """Python ``code`` in a process of its own (a real client), with ``env``; fails the test
    with its stderr unless it exits 0; the JSON of its last line of output."""
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_golden(text: str, golden: Path) -> None:
    """``text`` is the golden file's (``HF2OCI_UPDATE_GOLDEN=1`` rewrites it first)."""
    if os.environ.get("HF2OCI_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), f"{golden} differs (HF2OCI_UPDATE_GOLDEN=1)"


def cli(*args: str) -> Result:
    """Run hf2oci in-process; an unexpected exception fails the test (no traceback hiding)."""
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def skopeo_inspect(ref: str, *, raw: bool = False, config: bool = False) -> Any:
    cmd = ["skopeo", "inspect", "--tls-verify=false"]
    if raw:
        cmd.append("--raw")
    if config:
        cmd.append("--config")
    out = subprocess.run([*cmd, ref], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def skopeo_tags(repository: str) -> list[str]:
    """The tags skopeo lists for ``repository`` (``host/ns/name``); none when it is absent."""
    out = subprocess.run(
        ["skopeo", "list-tags", "--tls-verify=false", f"docker://{repository}"],
        capture_output=True,
        text=True,
    )
    return list(json.loads(out.stdout)["Tags"]) if out.returncode == 0 else []


def docker_files(image: str, dest: Path) -> dict[str, bytes]:
    """docker pull + create + cp /REPO → {relative path: bytes}."""
    subprocess.run(["docker", "pull", "-q", image], check=True, capture_output=True)
    return engine_files(image, dest)


def engine_files(image: str, dest: Path) -> dict[str, bytes]:
    """docker create + cp /REPO of the engine's ``image`` (no pull) → {relative path: bytes}."""
    cid = subprocess.run(
        ["docker", "create", image, "sh"], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        subprocess.run(["docker", "cp", f"{cid}:/REPO", str(dest)], check=True, capture_output=True)
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True)
    return read_tree(dest)


def read_tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def umoci_files(source: str, dest: Path) -> dict[str, bytes]:
    """No engine: skopeo copies ``source`` (``docker://…`` or ``oci:DIR:TAG``; of an index,
    this machine's platform) into a layout of its own, umoci unpacks it; /REPO's files."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["skopeo", "copy", "--src-tls-verify=false", source, f"oci:{dest / 'layout'}:t"],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        ["umoci", "raw", "unpack", "--image", f"{dest / 'layout'}:t", str(dest / "root")],
        check=True, capture_output=True,
    )  # fmt: skip
    return read_tree(dest / "root" / "REPO")
