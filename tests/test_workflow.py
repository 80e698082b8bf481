"""The workflows: actionlint, and the plan → mirror → record chain run with the exact commands
the workflow file holds, against the test hub, the real registry and a git remote."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import git
import pytest
import yaml

from helpers import cli, make_project

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def test_actionlint_passes_on_every_workflow() -> None:
    assert WORKFLOWS
    actionlint = Path(sys.executable).parent / "actionlint"
    exe = str(actionlint) if actionlint.exists() else "actionlint"
    proc = subprocess.run([exe, *map(str, WORKFLOWS)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def evaluate(expr: str, ctx: dict[str, Any]) -> str:
    """A tiny evaluator for the expressions the workflow uses: paths, '==', '&&', '||', ()."""
    tokens = re.findall(r"'[^']*'|&&|\|\||==|!=|[()]|[A-Za-z_][\w.-]*", expr)
    py = []
    for t in tokens:
        if t.startswith("'") or t in ("==", "!=", "(", ")"):
            py.append(t)
        elif t == "&&":
            py.append(" and ")
        elif t == "||":
            py.append(" or ")
        else:
            value: Any = ctx
            for part in t.split("."):
                value = value.get(part, "") if isinstance(value, dict) else ""
            py.append(repr(value))
    return str(eval("".join(py), {"__builtins__": {}}))


def substitute(text: str, ctx: dict[str, Any]) -> str:
    return EXPR.sub(lambda m: evaluate(m.group(1), ctx), text)


def step(workflow: dict[str, Any], job: str, name: str) -> dict[str, Any]:
    for s in workflow["jobs"][job]["steps"]:
        if name in (s.get("id"), s.get("name")):
            return dict(s)
    raise KeyError(f"{job}/{name}")


def run_step(
    s: dict[str, Any], ctx: dict[str, Any], cwd: Path, extra: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **extra}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    for key, value in (s.get("env") or {}).items():
        env[key] = substitute(str(value), ctx)
    proc = subprocess.run(
        ["bash", "-e", "-c", substitute(s["run"], ctx)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    print(proc.stdout, proc.stderr)
    return proc


def read_outputs(path: Path) -> dict[str, str]:
    out, lines, i = {}, path.read_text().splitlines(), 0
    while i < len(lines):
        name, _, delim = lines[i].partition("<<")
        j = lines.index(delim, i + 1)
        out[name] = "\n".join(lines[i + 1 : j])
        i = j + 1
    return out


def run_chain(
    workflow: dict[str, Any],
    remote: Path,
    work: Path,
    secrets: dict[str, str],
    inputs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """plan, then one mirror job per matrix entry (own clones), then record."""
    ctx: dict[str, Any] = {
        "secrets": secrets,
        "inputs": inputs or {},
        "env": {},
        "github": {"actor": "tester"},
    }
    plan_dir = work / "plan"
    git.Repo.clone_from(remote, plan_dir).close()
    outputs = plan_dir.parent / "plan-output"
    outputs.write_text("")
    rc = run_step(
        step(workflow, "plan", "plan"), ctx, plan_dir, {"GITHUB_OUTPUT": str(outputs)}
    ).returncode
    planned = read_outputs(outputs)
    result: dict[str, Any] = {"plan_rc": rc, "outputs": planned, "mirror_rcs": []}
    if planned.get("has_work") != "true":
        return result
    matrix = json.loads(planned["matrix"])
    ctx["needs"] = {"plan": {"outputs": planned}}
    artifacts = work / "artifacts"
    for index, entry in enumerate(matrix["include"]):
        job_dir = work / f"mirror-{index}"
        git.Repo.clone_from(remote, job_dir).close()
        job_ctx = {**ctx, "matrix": entry, "strategy": {"job-index": str(index)}}
        proc = run_step(step(workflow, "mirror", "Mirror"), job_ctx, job_dir, {})
        result["mirror_rcs"].append(proc.returncode)
        for produced in (job_dir / "results").glob("*.json"):  # what upload-artifact keeps
            (artifacts / f"result-{index}").mkdir(parents=True, exist_ok=True)
            produced.rename(artifacts / f"result-{index}" / produced.name)
    record_dir = work / "record"
    git.Repo.clone_from(remote, record_dir).close()
    if artifacts.exists():
        artifacts.rename(record_dir / "results")  # what download-artifact does
    summary = work / "summary.md"
    result["record_rc"] = run_step(
        step(workflow, "record", "Record"), ctx, record_dir, {"GITHUB_STEP_SUMMARY": str(summary)}
    ).returncode
    result["summary"] = summary.read_text() if summary.exists() else ""
    return result


@pytest.fixture
def remote(tmp_path: Path, registry, busybox_base, random_repo, hub) -> tuple[Path, list[str]]:
    good1, _, _ = random_repo()
    good2, _, _ = random_repo(repo_type="dataset")
    gated, _, _ = random_repo(gated=True)
    bare = tmp_path / "remote.git"
    git.Repo.init(bare, bare=True, initial_branch="main").close()
    seed = tmp_path / "seed"
    repo = git.Repo.clone_from(bare, seed)
    (seed / "get_hf").mkdir()
    (seed / "get_hf" / "to_get_models.txt").write_text(f"{good1}\n{gated}\nnobody/missing\n")
    (seed / "get_hf" / "to_get_datasets.txt").write_text(f"{good2}\n")
    (seed / "get_hf" / "config.yaml").write_text(
        yaml.safe_dump({"registry": registry.host, "namespace": "gha", "base_image": busybox_base})
    )
    repo.index.add(["get_hf/to_get_models.txt", "get_hf/to_get_datasets.txt", "get_hf/config.yaml"])
    actor = git.Actor("test", "test@example.com")
    repo.index.commit("add repos", author=actor, committer=actor)
    repo.remote().push("HEAD:refs/heads/main")
    repo.close()
    return bare, [good1, good2, gated]


def test_plan_mirror_record_chain_as_the_workflow_runs_it(
    remote: tuple[Path, list[str]], hub, tmp_path: Path
) -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "mirror.yml").read_text())
    bare, (model, dataset, gated) = remote

    first = run_chain(workflow, bare, tmp_path / "run1", {})
    assert first["plan_rc"] == 0
    assert json.loads(first["outputs"]["count"]) == 3  # the missing repo is not planned
    assert first["mirror_rcs"].count(1) == 1  # the gated repo's job failed, the others did not
    assert first["record_rc"] == 1
    assert gated in first["summary"] and "HF_TOKEN" in first["summary"]
    check = git.Repo.clone_from(bare, tmp_path / "check1")
    ledger = json.loads((tmp_path / "check1" / "get_hf" / "mirrored.json").read_text())
    assert set(ledger["models"]) == {model} and set(ledger["datasets"]) == {dataset}
    models_md = (tmp_path / "check1" / "models.md").read_text()
    assert model in models_md and gated not in models_md
    assert dataset in (tmp_path / "check1" / "datasets.md").read_text()
    assert "Mirror 1 model, 1 dataset" in check.head.commit.message
    check.close()

    # the token arrives as a secret: the next run mirrors only the gated repo
    hub.tokens.add("hf_chain_token_0123456789")
    second = run_chain(workflow, bare, tmp_path / "run2", {"HF_TOKEN": "hf_chain_token_0123456789"})
    assert json.loads(second["outputs"]["count"]) == 1
    assert second["mirror_rcs"] == [0] and second["record_rc"] == 0
    git.Repo.clone_from(bare, tmp_path / "check2").close()
    ledger = json.loads((tmp_path / "check2" / "get_hf" / "mirrored.json").read_text())
    assert set(ledger["models"]) == {model, gated}
    assert "hf_chain_token" not in (tmp_path / "check2" / "get_hf" / "mirrored.json").read_text()

    third = run_chain(workflow, bare, tmp_path / "run3", {"HF_TOKEN": "hf_chain_token_0123456789"})
    assert third["outputs"]["has_work"] == "false" and third["mirror_rcs"] == []


def test_bad_list_lines_fail_the_plan_with_annotations(tmp_path: Path, hub) -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "mirror.yml").read_text())
    (tmp_path / "get_hf").mkdir()
    (tmp_path / "get_hf" / "to_get_models.txt").write_text("ok/repo\nnot a repo\n")
    out = tmp_path / "out"
    out.write_text("")
    env = {"GITHUB_OUTPUT": str(out)}
    s = step(workflow, "plan", "plan")
    proc = run_step(s, {"secrets": {}, "inputs": {}}, tmp_path, env)
    assert proc.returncode == 1
    assert "::error file=get_hf/to_get_models.txt,line=2::invalid repo id" in proc.stdout
    assert read_outputs(out)["has_work"] == "false"


def test_dispatch_for_one_repo_plans_just_that_repo(
    remote: tuple[Path, list[str]], tmp_path: Path
) -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "mirror.yml").read_text())
    bare, (_, dataset, _) = remote
    clone = tmp_path / "dispatch"
    git.Repo.clone_from(bare, clone).close()
    out = tmp_path / "out"
    as_dataset, as_model = {"repo_id": dataset, "dataset": True}, {"repo_id": dataset}
    for inputs, listed in [(as_dataset, True), (as_model, False)]:
        out.write_text("")
        ctx = {"secrets": {}, "inputs": inputs, "github": {}}
        proc = run_step(step(workflow, "plan", "plan"), ctx, clone, {"GITHUB_OUTPUT": str(out)})
        if listed:
            assert proc.returncode == 0
            jobs = json.loads(read_outputs(out)["matrix"])["include"]
            assert [(j["type"], j["lines"]) for j in jobs] == [("dataset", dataset)]
        else:  # listed as a dataset, not as a model
            assert proc.returncode != 0 and "is not listed in" in proc.stderr


def test_plan_json_is_exactly_a_matrix_and_batches(
    tmp_path: Path, hub, random_repo, registry, busybox_base, monkeypatch: pytest.MonkeyPatch
) -> None:
    repos = [random_repo()[0] for _ in range(3)]
    lines = [f"{repos[0]} include=*.json", repos[1], f"{repos[2]} preset=safetensors"]
    make_project(
        tmp_path,
        models=lines,
        config={"registry": registry.host, "namespace": "planjson", "base_image": busybox_base},
    )
    monkeypatch.chdir(tmp_path)
    result = cli("plan", "--json", "-q")
    assert result.exit_code == 0, result.output
    matrix = json.loads(result.stdout)
    assert set(matrix) == {"include"}
    assert [j["lines"] for j in matrix["include"]] == lines
    assert [j["name"] for j in matrix["include"]] == repos
    assert {j["type"] for j in matrix["include"]} == {"model"} and not any(
        j["large"] for j in matrix["include"]
    )
    batched = json.loads(cli("plan", "--json", "-q", "--batch-size", "2").stdout)["include"]
    assert [j["lines"].split("\n") for j in batched] == [lines[:2], lines[2:]]
    capped = json.loads(cli("plan", "--json", "-q", "--max-jobs", "1").stdout)["include"]
    assert len(capped) == 1 and capped[0]["lines"].split("\n") == lines


def test_bad_lines_annotate_whenever_running_in_actions(
    tmp_path: Path, hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_project(tmp_path, models=["ok/repo", "not a repo"], datasets=["x/y preset=nope"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    result = cli("plan", "--json")
    assert result.exit_code == 1
    assert "::error file=get_hf/to_get_models.txt,line=2::invalid repo id" in result.stdout
    assert "::error file=get_hf/to_get_datasets.txt,line=1::" in result.stdout
    assert "get_hf/to_get_models.txt:2: invalid repo id" in result.stderr
    monkeypatch.delenv("GITHUB_ACTIONS")
    assert "::error" not in cli("plan", "--json").stdout


def test_a_job_that_fails_before_mirroring_still_reports(
    tmp_path: Path, hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad option or config writes a failed result; a job with no result at all is a failure."""
    make_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = cli("mirror", "--lines", "org/a\norg b", "--result", "r/0.json", "--no-record")
    assert result.exit_code != 0
    doc = json.loads((tmp_path / "r" / "0.json").read_text())
    assert doc["outcomes"][0]["status"] == "failed"
    assert doc["outcomes"][0]["origin"] == "org/a / org b"
    summary = tmp_path / "summary.md"
    result = cli("record", "--results", "r", "--expect", "3", "--summary", str(summary))
    assert result.exit_code == 1
    text = summary.read_text()
    assert "0 mirrored, 2 failed" in text
    assert "org/a / org b" in text and "2 of 3 planned repos have no result" in text
    assert (
        not (tmp_path / "get_hf" / "mirrored.json").exists()
        or "org/a" not in (tmp_path / "get_hf" / "mirrored.json").read_text()
    )
