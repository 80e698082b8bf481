"""End to end: `hf2oci sync`/`mirror` against the test hub, the real registry and engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import cli, docker_files, make_project, read_tree, skopeo_inspect, tag_of


def test_sync_pushes_images_with_every_file_byte_for_byte(
    hub,
    random_repo,
    registry,
    busybox_base,
    project: Path,
) -> None:
    model, sha, files = random_repo(card_data={"license": "apache-2.0"})
    dataset, dsha, dfiles = random_repo(repo_type="dataset")
    make_project(
        project,
        models=[model],
        datasets=[dataset],
        config={"registry": registry.host, "namespace": "e2e", "base_image": busybox_base},
    )
    result = cli("sync", "-q")
    assert result.exit_code == 0, result.output

    ref = f"{registry.host}/e2e/models:{tag_of(model)}"
    got = docker_files(ref, project / "out")
    assert got == files

    dref = f"{registry.host}/e2e/datasets:{tag_of(dataset)}"
    assert docker_files(dref, project / "dout") == dfiles

    # the immutable tag points at the same manifest; labels and annotations say what it is
    info = skopeo_inspect(f"docker://{ref}")
    pinned = skopeo_inspect(f"docker://{registry.host}/e2e/models:{tag_of(model)}--{sha[:12]}")
    assert info["Digest"] == pinned["Digest"]
    labels = info["Labels"]
    assert labels["org.opencontainers.image.revision"] == sha
    assert labels["org.opencontainers.image.title"] == model
    assert labels["org.opencontainers.image.source"] == f"{hub.url}/{model}"
    assert labels["org.opencontainers.image.licenses"] == "apache-2.0"
    assert labels["io.huggingface.repo_id"] == model
    assert labels["io.huggingface.repo_type"] == "model"
    manifest = skopeo_inspect(f"docker://{ref}", raw=True)
    assert manifest["annotations"]["org.opencontainers.image.revision"] == sha
    dlabels = skopeo_inspect(f"docker://{dref}")["Labels"]
    assert dlabels["org.opencontainers.image.source"] == f"{hub.url}/datasets/{dataset}"

    # records: the ledger and the markdown pages
    ledger = json.loads((project / "get_hf" / "mirrored.json").read_text())
    entry = ledger["models"][model]
    assert entry["revision"] == sha
    assert entry["digest"] == info["Digest"]
    assert entry["file_count"] == len(files)
    assert entry["size"] == sum(len(b) for b in files.values())
    assert ledger["datasets"][dataset]["revision"] == dsha
    assert (
        f"docker pull {registry.host}/e2e/models:{tag_of(model)}"
        in (project / "models.md").read_text()
    )
    assert tag_of(dataset) in (project / "datasets.md").read_text()


def test_rerun_skips_with_metadata_calls_only_and_follows_moved_revisions(
    hub,
    random_repo,
    registry,
    busybox_base,
    project: Path,
) -> None:
    model, sha, _files = random_repo()
    make_project(
        project,
        models=[model],
        config={"registry": registry.host, "namespace": "rerun", "base_image": busybox_base},
    )
    assert cli("sync", "-q").exit_code == 0
    first = skopeo_inspect(f"docker://{registry.host}/rerun/models:{tag_of(model)}")

    hub.reset_log()
    again = cli("sync", "--json")
    assert again.exit_code == 0, again.output
    doc = json.loads(again.stdout)
    assert doc["skipped"] == 1 and doc["mirrored"] == 0
    assert hub.count("GET", "/resolve/") == 0  # no file was downloaded again

    new_sha = hub.commit(model, {"config.json": b'{"changed": true}\n'})
    moved = cli("sync", "--json")
    assert moved.exit_code == 0, moved.output
    assert json.loads(moved.stdout)["mirrored"] == 1
    second = skopeo_inspect(f"docker://{registry.host}/rerun/models:{tag_of(model)}")
    assert second["Labels"]["org.opencontainers.image.revision"] == new_sha
    assert second["Digest"] != first["Digest"]
    # the old immutable tag still holds the old revision
    old = skopeo_inspect(f"docker://{registry.host}/rerun/models:{tag_of(model)}--{sha[:12]}")
    assert old["Digest"] == first["Digest"]

    # the same commit asked for by its sha: same files, but the image now says so (ref label)
    (project / "get_hf/to_get_models.txt").write_text(f"{model}@{new_sha}\n")
    pinned = cli("plan")
    assert pinned.exit_code == 0, pinned.output
    assert "revision asked for changed: main →" in pinned.output
    assert json.loads(cli("sync", "--json").stdout)["mirrored"] == 1
    third = skopeo_inspect(f"docker://{registry.host}/rerun/models:{tag_of(model)}")
    assert third["Labels"]["io.huggingface.ref"] == new_sha
    assert json.loads(cli("sync", "--json").stdout)["skipped"] == 1


def test_same_input_gives_the_same_digest(
    hub,
    random_repo,
    registry,
    busybox_base,
    project: Path,
) -> None:
    model, _, _ = random_repo()
    make_project(project, models=[model])
    common = ["--registry", registry.host, "--base-image", busybox_base, "-q"]
    assert cli("sync", "--namespace", "repro-a", *common).exit_code == 0
    assert cli("sync", "--namespace", "repro-b", "--force", *common).exit_code == 0
    a = skopeo_inspect(f"docker://{registry.host}/repro-a/models:{tag_of(model)}")
    b = skopeo_inspect(f"docker://{registry.host}/repro-b/models:{tag_of(model)}")
    assert a["Digest"] == b["Digest"]


def test_layout_output_needs_no_registry_or_engine(
    hub, random_repo, project: Path, tmp_path: Path
) -> None:
    model, sha, files = random_repo()
    make_project(project, models=[model], config={"namespace": "local", "base_image": "scratch"})
    result = cli("sync", "-q")
    assert result.exit_code == 0, result.output
    layout = project / "oci-images" / "local" / "models"
    tag = tag_of(model)
    info = skopeo_inspect(f"oci:{layout}:{tag}")
    assert info["Labels"]["org.opencontainers.image.revision"] == sha
    # an independent tool unpacks it to the same bytes
    bundle = tmp_path / "bundle"
    subprocess.run(
        ["umoci", "raw", "unpack", "--image", f"{layout}:{tag}", str(bundle)],
        check=True,
        capture_output=True,
    )
    assert read_tree(bundle / "REPO") == files
    ledger = json.loads((project / "get_hf" / "mirrored.json").read_text())
    assert ledger["models"][model]["destination"] == "oci-layout"


def test_filters_and_presets_select_files(
    hub,
    registry,
    busybox_base,
    project: Path,
) -> None:
    files = {
        "config.json": b"{}",
        "model.safetensors": b"S" * 2048,
        "pytorch_model.bin": b"B" * 2048,
        "onnx/model.onnx": b"O" * 100,
        "README.md": b"# card",
    }
    hub.add_repo("filt/preset", files)
    hub.add_repo("filt/include", files)
    make_project(
        project,
        models=["filt/preset preset=safetensors", "filt/include include=*.json,README.md"],
        config={"registry": registry.host, "namespace": "filt", "base_image": busybox_base},
    )
    assert cli("sync", "-q").exit_code == 0
    ledger = json.loads((project / "get_hf" / "mirrored.json").read_text())
    assert ledger["models"]["filt/preset"]["file_count"] == 3
    assert ledger["models"]["filt/include"]["file_count"] == 2
    got = docker_files(f"{registry.host}/filt/models:filt--preset", project / "x")
    assert sorted(got) == ["README.md", "config.json", "model.safetensors"]


def test_failures_are_one_line_each_and_never_stop_the_others(
    hub,
    random_repo,
    registry,
    busybox_base,
    project: Path,
) -> None:
    good, _, _ = random_repo()
    other, _, _ = random_repo()
    gated, _, _ = random_repo(gated=True)
    make_project(
        project,
        models=[
            "# a comment",
            "bad id with spaces",
            "nobody/missing-repo",
            f"{other}@no-such-branch",
            gated,
            good,
        ],
        config={"registry": registry.host, "namespace": "fail", "base_image": busybox_base},
    )
    result = cli("sync", "-q")
    assert result.exit_code == 1
    err = result.stderr
    assert "Traceback" not in result.output
    assert "get_hf/to_get_models.txt:2: invalid repo id 'bad id with spaces'" in err
    assert "get_hf/to_get_models.txt:3:" in err and "not found" in err
    assert "no-such-branch" in err
    assert "HF_TOKEN" in err and "gated" in err
    assert "1 mirrored" in err and "4 failed" in err
    ledger = json.loads((project / "get_hf" / "mirrored.json").read_text())
    assert list(ledger["models"]) == [good]
    assert "missing-repo" not in (project / "models.md").read_text()


def test_gated_repo_with_token_never_leaks_it(
    hub,
    random_repo,
    registry,
    busybox_base,
    project: Path,
    monkeypatch,
) -> None:
    token = "hf_secretTOKEN1234567890"
    hub.tokens.add(token)
    monkeypatch.setenv("HF_TOKEN", token)
    gated, _sha, _files = random_repo(gated=True)
    make_project(
        project,
        models=[gated],
        config={"registry": registry.host, "namespace": "gated", "base_image": busybox_base},
    )
    result = cli("sync", "--json")
    assert result.exit_code == 0, result.output
    assert token not in result.output
    ref = f"docker://{registry.host}/gated/models:{tag_of(gated)}"
    assert token not in json.dumps(skopeo_inspect(ref, config=True))
    assert token not in json.dumps(skopeo_inspect(ref, raw=True))
    for name in ("get_hf/mirrored.json", "models.md"):
        assert token not in (project / name).read_text()


def test_a_gated_repo_says_the_token_file_has_no_access(hub, project: Path, tmp_path: Path) -> None:
    """A token found in the token file (as huggingface_hub finds it), not in HF_TOKEN: the
    message says the token sent has no access, not to set HF_TOKEN, also where the refusal
    comes to a streamed file (a fresh process: the client reads HF_TOKEN_PATH at import)."""
    gated = "gated/only-large"
    hub.add_repo(gated, {"model.safetensors": os.urandom(3 << 20)}, gated=True)
    make_project(project, models=[gated], config={"base_image": "scratch"})
    token_file = tmp_path / "token"
    token_file.write_text("hf_notAllowed0000000000\n")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env["HF_TOKEN_PATH"] = str(token_file)
    proc = subprocess.run([sys.executable, "-m", "hf2oci", "mirror", gated], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{gated} is gated: the token sent (HF_TOKEN or the token file) has no access" in (
        proc.stderr
    )
    assert "hf_notAllowed" not in proc.stderr


def test_registry_refusal_fails_that_repo_with_one_line(
    hub, random_repo, project: Path, tmp_path: Path
) -> None:
    from servers import start_registry

    htpasswd = tmp_path / "htpasswd"
    # bcrypt hash of "secret" for user "u"
    htpasswd.write_text("u:$2b$05$qeuDtKINKrS8vHsQ2FM.auzvq99qppFUw6rSiWwp76.7gW6Ro07bm\n")
    reg = start_registry(
        tmp_path / "authreg",
        extra_config=f"auth:\n  htpasswd:\n    realm: test\n    path: {htpasswd}\n",
    )
    try:
        model, _, _ = random_repo()
        make_project(project, models=[model])
        result = cli("sync", "-q", "--registry", reg.host, "--base-image", "scratch")
        assert result.exit_code == 1
        assert "Traceback" not in result.output
        lines = [line for line in result.stderr.splitlines() if model in line]
        assert lines and any("401" in line or "credentials" in line for line in lines)
    finally:
        reg.stop()


def test_prepare_hook_gets_its_environment_and_fails_only_its_repo(
    hub, random_repo, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok, sha, files = random_repo()
    bad, _, _ = random_repo()
    # secrets stay out of the hook's environment, and so does anything not documented
    monkeypatch.setenv("HF2OCI_REGISTRY_USERNAME", "alice")
    monkeypatch.setenv("HF2OCI_REGISTRY_PASSWORD", "registry-s3cret")
    monkeypatch.setenv("HF_TOKEN", "hf_hook_secret_token")
    monkeypatch.setenv("SOME_CI_VARIABLE", "x")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"hook-key-pass"),
    )
    monkeypatch.setenv("HF2OCI_SIGNING_KEY", pem.decode())  # the ok repo is signed too
    monkeypatch.setenv("HF2OCI_SIGNING_KEY_PASSWORD", "hook-key-pass")
    hook = f"""set -eu
if [ "$REPO_ID" = "{bad}" ]; then echo "cannot convert" >&2; exit 3; fi
printf '%s|%s|%s|%s' "$REPO_ID" "$REPO_TYPE" "$REVISION" "$REPO_URL" > "$OUT_DIR/PREPARED"
env | cut -d= -f1 | sort > "$OUT_DIR/ENV"
test -f "$SRC_DIR/config.json"
rm "$OUT_DIR/config.json"
"""
    make_project(project, models=[ok, bad], config={"base_image": "scratch"}, prepare=hook)
    result = cli("sync", "-q")
    assert result.exit_code == 1
    assert "prepare.sh exited 3" in result.stderr and "cannot convert" in result.stderr
    layout = project / "oci-images" / "hgfkeep" / "models"
    bundle = project / "bundle"
    subprocess.run(
        ["umoci", "raw", "unpack", "--image", f"{layout}:{tag_of(ok)}", str(bundle)],
        check=True,
        capture_output=True,
    )
    got = read_tree(bundle / "REPO")
    assert got["PREPARED"].decode() == f"{ok}|model|{sha}|{hub.url}/{ok}"
    assert "config.json" not in got
    assert set(got) == (set(files) - {"config.json"}) | {"PREPARED", "ENV"}
    names = set(got["ENV"].decode().split()) - {"PWD", "SHLVL", "_", "OLDPWD"}
    documented = {"REPO_ID", "REPO_TYPE", "REVISION", "REPO_URL", "SRC_DIR", "OUT_DIR"}
    assert documented <= names <= documented | {"PATH", "HOME", "HF_ENDPOINT", "LANG", "LC_ALL",
                                                "TMPDIR"}  # fmt: skip
    index = json.loads((layout / "index.json").read_text())
    ref_names = {m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]}
    assert any(n.endswith(".sig") for n in ref_names)  # signed, and the key stayed out of the hook


@pytest.mark.parametrize(
    ("base", "why"),
    [
        ("registry.invalid/library/busybox:latest", "does not resolve"),
        ("127.0.0.1:1/library/busybox:latest", "refused"),
    ],
)
def test_an_unreachable_base_fails_first_in_one_line(
    hub, random_repo, project: Path, base: str, why: str
) -> None:
    """The base is read before any file is fetched, once per run, and its failure says which
    registry, why, and what to do (it once came after the download, as urllib3's text)."""
    models = [random_repo()[0], random_repo()[0]]
    make_project(project, models=models, config={"base_image": base})
    hub.reset_log()
    result = cli("sync")
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    line = errors[0]
    host = base.split("/")[0]
    assert host in line and why in line and "base_image" in line and "scratch" in line
    assert len(line) < 400 and "HTTPConnectionPool" not in line and "Traceback" not in result.output
    assert hub.count("GET", "/resolve/") == 0  # nothing was downloaded
    assert not (project / "oci-images").exists()


def test_platform_is_chosen_not_inherited_from_the_runner(
    hub, random_repo, registry, project: Path
) -> None:
    """The base's platform is a setting: the digest no longer depends on the machine."""
    from test_registry import push_multi_platform_base

    push_multi_platform_base(registry, "multi/base")
    model, _, _ = random_repo()
    base = f"{registry.host}/multi/base:multi"
    make_project(project, models=[model], config={"base_image": base})
    digests = {}
    for platform in ("linux/amd64", "linux/arm64"):
        out = cli("mirror", model, "--platform", platform, "--output-dir", platform, "--json", "-q")
        assert out.exit_code == 0, out.output
        digests[platform] = json.loads(out.stdout)["results"][0]["digest"]
        layout = project / platform / "hgfkeep/models"
        config = skopeo_inspect(f"oci:{layout}:{tag_of(model)}", config=True)
        assert config["architecture"] == platform.split("/")[1]
    assert digests["linux/amd64"] != digests["linux/arm64"]
    make_project(project, config={"base_image": base, "platform": "linux/arm64"})
    again = cli("mirror", model, "--output-dir", "again", "--json", "-q")
    assert json.loads(again.stdout)["results"][0]["digest"] == digests["linux/arm64"]
    bad = cli("mirror", model, "--platform", "arm64")
    assert bad.exit_code == 2 and "invalid platforms 'arm64'" in bad.stderr
    missing = cli("mirror", model, "--platform", "linux/s390x", "--output-dir", "s390x")
    assert missing.exit_code == 1 and "no linux/s390x manifest" in missing.stderr


def test_config_errors_exit_2(project: Path) -> None:
    make_project(project, models=["a/b"])
    (project / "get_hf" / "config.yaml").write_text("namespace: x\nregistri: oops\n")
    result = cli("sync")
    assert result.exit_code == 2
    assert "config.yaml:2" in result.stderr and "registri" in result.stderr


def test_mirror_one_repo_and_tag_command(
    hub,
    random_repo,
    registry,
    busybox_base,
    project: Path,
) -> None:
    model, sha, files = random_repo()
    result = cli(
        "mirror",
        model,
        "--registry",
        registry.host,
        "--namespace",
        "one",
        "--base-image",
        busybox_base,
        "--exclude",
        "*.safetensors",
        "--json",
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["results"][0]["revision"] == sha
    got = docker_files(f"{registry.host}/one/models:{tag_of(model)}", project / "o")
    assert got == {k: v for k, v in files.items() if not k.endswith(".safetensors")}

    assert cli("tag", "facebook/opt-125m").stdout.strip() == "facebook--opt-125m"
    assert cli("tag", "--reverse", "facebook--opt-125m").stdout.strip() == "facebook/opt-125m"
    bad = cli("mirror", "not a repo")
    assert bad.exit_code == 2 and "invalid repo id" in bad.stderr


def test_docker_builder_gives_the_same_files_and_labels_as_oci(
    hub,
    random_repo,
    registry,
    busybox_base,
    project: Path,
) -> None:
    model, sha, files = random_repo()
    make_project(project, models=[model])
    common = ["--registry", registry.host, "--base-image", busybox_base, "-q"]
    assert cli("sync", "--namespace", "by-oci", "--builder", "oci", *common).exit_code == 0
    result = cli("sync", "--namespace", "by-docker", "--builder", "docker", *common)
    assert result.exit_code == 0, result.output
    via_oci = skopeo_inspect(f"docker://{registry.host}/by-oci/models:{tag_of(model)}")
    via_docker = skopeo_inspect(f"docker://{registry.host}/by-docker/models:{tag_of(model)}")
    assert via_docker["Labels"] == via_oci["Labels"]
    assert docker_files(f"{registry.host}/by-docker/models:{tag_of(model)}", project / "d") == files
    pinned = skopeo_inspect(
        f"docker://{registry.host}/by-docker/models:{tag_of(model)}--{sha[:12]}"
    )
    assert pinned["Digest"] == via_docker["Digest"]
    # the docker builder is idempotent too
    again = cli(
        "sync",
        "--namespace",
        "by-docker",
        "--builder",
        "docker",
        "--json",
        "--registry",
        registry.host,
        "--base-image",
        busybox_base,
    )
    assert json.loads(again.stdout)["skipped"] == 1


def test_docker_builder_without_a_registry_records_the_engine(
    hub, random_repo, busybox_base, project: Path
) -> None:
    """It used to record destination "oci-layout", point models.md at a layout that does not
    exist, and record the engine's image ID as the manifest digest."""
    model, _, files = random_repo()
    make_project(project, models=[model], config={"base_image": busybox_base})
    result = cli("sync", "--builder", "docker", "--namespace", "engine-only", "-q")
    assert result.exit_code == 0, result.output
    entry = json.loads((project / "get_hf/mirrored.json").read_text())["models"][model]
    assert entry["destination"] == "docker-engine" and entry["builder"] == "docker"
    name = f"engine-only/models:{tag_of(model)}"
    assert entry["image"] == "engine-only/models"
    image_id = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", name],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert entry["digest"] != image_id
    # the digest is the image's manifest digest: the oci builder makes the same image
    same = cli("mirror", model, "--namespace", "engine-only", "--no-record", "--json", "-q")
    assert json.loads(same.stdout)["results"][0]["digest"] == entry["digest"]
    page = (project / "models.md").read_text()
    assert f"docker image inspect {name}" in page and "skopeo copy oci:" not in page
    cid = subprocess.run(
        ["docker", "create", name, "sh"], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        subprocess.run(["docker", "cp", f"{cid}:/REPO", str(project / "out")], check=True)
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True)
    assert read_tree(project / "out") == files
    again = cli("sync", "--builder", "docker", "--namespace", "engine-only", "--json")
    assert json.loads(again.stdout)["skipped"] == 1


def test_long_repo_ids_get_short_tags_recorded_in_the_ledger(hub, project: Path) -> None:
    from hf2oci.naming import is_shortened, repo_tag
    from hf2oci.record import load_ledger

    repo_id = "an-organisation-with-a-long-name-0123456/" + "m" * 90 + "-v1.5"
    hub.add_repo(repo_id, {"config.json": b"{}"})
    make_project(project, models=[repo_id], config={"base_image": "scratch"})
    result = cli("sync", "-q")
    assert result.exit_code == 0, result.output
    tag = repo_tag(repo_id)
    assert len(tag) <= 128 and is_shortened(tag)
    info = skopeo_inspect(f"oci:{project / 'oci-images/hgfkeep/models'}:{tag}")
    assert info["Labels"]["io.huggingface.repo_id"] == repo_id
    found = load_ledger(project / "get_hf" / "mirrored.json").lookup_tag(tag)
    assert found is not None and found.repo_id == repo_id
    assert cli("tag", repo_id).stdout.strip() == tag


def test_cli_shape_flags_anywhere_dry_run_repo_type_and_digest_lines(
    hub, random_repo, project: Path
) -> None:
    model, _, _ = random_repo()
    dataset, _, _ = random_repo(repo_type="dataset")
    make_project(project, config={"base_image": "scratch"})
    # -q before the command and after it alike; --dry-run writes nothing
    for args in (["-q", "mirror", model, "--dry-run"], ["mirror", model, "--dry-run", "-q"]):
        result = cli(*args)
        assert result.exit_code == 0, result.output
        assert result.stdout == "" and "would mirror" not in result.stderr
        assert "1 planned" in result.stderr
    assert not (project / "oci-images").exists()
    said = cli("mirror", model, "--dry-run")
    assert "would mirror" in said.stderr and said.stdout == ""
    # one IMAGE:TAG@DIGEST line per image written, on stdout; the rest on stderr
    done = cli("mirror", "--repo-type", "dataset", dataset, "-q")
    assert done.exit_code == 0, done.output
    (line,) = done.stdout.splitlines()
    image, _, digest = line.partition("@")
    assert image == f"oci-images/hgfkeep/datasets:{tag_of(dataset)}"
    assert (
        digest
        == skopeo_inspect(f"oci:{project / 'oci-images/hgfkeep/datasets'}:{tag_of(dataset)}")[
            "Digest"
        ]
    )
    # --dataset is short for --repo-type dataset; they must not disagree
    again = cli("mirror", dataset, "--dataset", "--json")
    assert json.loads(again.stdout)["skipped"] == 1
    clash = cli("mirror", dataset, "--dataset", "--repo-type", "model")
    assert clash.exit_code == 2 and "--repo-type" in clash.stderr
    # -v anywhere turns logging on (a process of its own: pytest owns this one's logging)
    for args in (["-vv", "mirror", dataset, "--dataset"], ["mirror", dataset, "--dataset", "-vv"]):
        proc = subprocess.run(
            [sys.executable, "-m", "hf2oci", *args], capture_output=True, text=True, cwd=project
        )
        assert proc.returncode == 0 and "DEBUG hf2oci.pack.plan" in proc.stderr, proc.stderr


def test_models_md_links_the_hub_the_labels_name(hub, random_repo, project: Path) -> None:
    """One hub URL: models.md once linked huggingface.co while the labels named HF_ENDPOINT."""
    model, _, _ = random_repo()
    make_project(project, models=[model], config={"base_image": "scratch"})
    assert cli("sync", "-q").exit_code == 0
    labels = skopeo_inspect(f"oci:{project / 'oci-images/hgfkeep/models'}:{tag_of(model)}")[
        "Labels"
    ]
    source = labels["org.opencontainers.image.source"]
    assert source == f"{hub.url}/{model}"
    assert f"]({source})" in (project / "models.md").read_text()


def test_no_plain_http_asks_for_https_even_on_loopback(
    random_repo, registry, project: Path
) -> None:
    model, _, _ = random_repo()
    make_project(project, models=[model], config={"base_image": "scratch"})
    result = cli("sync", "--registry", registry.host, "--no-plain-http", "-q")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "TLS" in result.stderr or "SSL" in result.stderr or "https" in result.stderr.lower()
    assert cli("sync", "--registry", registry.host, "-q").exit_code == 0  # loopback: HTTP


def test_max_layer_size_caps_every_layer_carrying_big_files_in_parts(
    hub, random_repo, registry, project: Path
) -> None:
    """Every layer within the limit, tar and all; a file over it goes in parts; a limit that
    holds no part fails each repo at plan time, before anything is downloaded."""
    big, _, _ = random_repo(size=3 * 1024 * 1024)
    ok, _, _ = random_repo(size=1024)
    make_project(project, models=[big, ok], config={"base_image": "scratch"})
    hub.reset_log()
    result = cli("sync", "--registry", registry.host, "--namespace", "cap", "--max-layer-size",
                 "2MiB", "--json")  # fmt: skip
    doc = json.loads(result.stdout)
    assert result.exit_code == 0 and doc["mirrored"] == 2, result.output
    for repo in (big, ok):
        manifest = skopeo_inspect(f"docker://{registry.host}/cap/models:{tag_of(repo)}", raw=True)
        assert all(layer["size"] <= 2 * 1024 * 1024 for layer in manifest["layers"])
    parts = json.loads(manifest["annotations"].get("io.hf2oci.parts", "{}"))
    assert parts == {}  # the small repo has none
    manifest = skopeo_inspect(f"docker://{registry.host}/cap/models:{tag_of(big)}", raw=True)
    parts = json.loads(manifest["annotations"]["io.hf2oci.parts"])
    assert parts["model.safetensors"]["parts"] == [
        "model.safetensors.part-001-of-002", "model.safetensors.part-002-of-002"]  # fmt: skip
    hub.reset_log()
    result = cli("sync", "--registry", registry.host, "--namespace", "cap2", "--max-layer-size",
                 "1KiB", "--json")  # fmt: skip
    doc = json.loads(result.stdout)
    assert result.exit_code == 1 and doc["failed"] == 2
    assert all("max_layer_size 1.0 KiB is too small to carry" in r["message"]
               for r in doc["results"])  # fmt: skip
    assert not hub.count("GET", "/resolve/")  # nothing was downloaded
    bad = cli("sync", "--max-layer-size", "lots")
    assert bad.exit_code == 2 and "max_layer_size" in bad.stderr


def test_tag_reverse_reads_a_shortened_tag_from_the_ledger(hub, project: Path) -> None:
    """The README said the shortened-tag mapping is kept in mirrored.json, but nothing read it
    back: `tag --reverse` refused every shortened tag."""
    from hf2oci.naming import repo_tag

    repo_id = "an-organisation-with-a-long-name-0123456/" + "r" * 90 + "-v2"
    tag = repo_tag(repo_id)
    make_project(project, config={"base_image": "scratch"})
    missing = cli("tag", "--reverse", tag)
    assert missing.exit_code == 2
    assert f"tag {tag!r} was shortened, and get_hf/mirrored.json does not record it" in (
        missing.stderr
    )
    hub.add_repo(repo_id, {"config.json": b"{}"})
    make_project(project, models=[repo_id], config={"base_image": "scratch"})
    assert cli("sync", "-q").exit_code == 0
    assert cli("tag", "--reverse", tag).stdout.strip() == repo_id
    # --get-hf elsewhere, and a ledger of another name (config key `record`)
    other = project / "elsewhere"
    make_project(other, config={"record": "ledger.json"})
    (other / "get_hf" / "ledger.json").write_bytes(
        (project / "get_hf" / "mirrored.json").read_bytes()
    )
    found = cli("tag", "--reverse", tag, "--get-hf", str(other / "get_hf"))
    assert found.stdout.strip() == repo_id, found.output
    # the rule still reverses plain tags without any ledger
    assert cli("tag", "--reverse", "org--name--0123456789ab").stdout.strip() == "org/name"
