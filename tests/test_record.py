"""The record stage: ledger, markdown pages (golden files), git commits against a real remote."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import docker
import git
import jinja2
import pytest

from hf2oci.errors import RecordError
from hf2oci.record import (
    DEFAULT_AUTHOR,
    Ledger,
    commit_message,
    commit_records,
    human_size,
    load_ledger,
    record_results,
    redact,
    render_markdown,
    save_ledger,
    write_records,
)
from hf2oci.render import dockerquote, render
from hf2oci.spec import Mirrored

GOLDEN = Path(__file__).parent / "golden"
#: set HF2OCI_UPDATE_GOLDEN=1 to rewrite the golden files after an intended change
UPDATE_GOLDEN = os.environ.get("HF2OCI_UPDATE_GOLDEN") == "1"

SHA_A = "0123456789abcdef0123456789abcdef01234567"
SHA_B = "fedcba9876543210fedcba9876543210fedcba98"
SHA_C = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
LONG_ID = "some-org/" + "a-very-long-model-name-" * 6 + "end"
SHORT_TAG = (
    "some-org--a-very-long-model-name-a-very-long-model-name-a-very-long-model-n--3f2a9c1d7e5b"
)


def mirrored(repo_id: str = "org/a", **changes: object) -> Mirrored:
    base = Mirrored(
        repo_id=repo_id,
        repo_type="model",
        revision=SHA_A,
        requested_revision="main",
        image="registry.example:5000/ns/models",
        tags=(repo_id.replace("/", "--"), f"{repo_id.replace('/', '--')}--{SHA_A[:12]}"),
        digest="sha256:" + "ab" * 32,
        size=1_288_490_189,
        file_count=12,
        mirrored_at="2026-11-23T14:00:00Z",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def sample_ledger() -> Ledger:
    """Registry and layout entries, a shortened tag, a `|` to escape, models and datasets."""
    return Ledger().merge(
        [
            mirrored("org/a", license="apache-2.0"),
            mirrored(
                "org/pipe",
                revision=SHA_B,
                requested_revision="exp|2",
                tags=("org--pipe", f"org--pipe--{SHA_B[:12]}"),
                size=512,
                file_count=1,
                mirrored_at="2026-11-22T09:30:00Z",
            ),
            mirrored(
                LONG_ID,
                revision=SHA_C,
                requested_revision="v1.0",
                tags=(SHORT_TAG, f"{SHORT_TAG[:100]}--{SHA_C[:12]}"),
                image="oci-images/ns/models",
                destination="oci-layout",
                size=3 * 1024**2 + 1,
                file_count=3,
            ),
            mirrored(
                "org/data",
                repo_type="dataset",
                image="oci-images/ns/datasets",
                destination="oci-layout",
                tags=("org--data", f"org--data--{SHA_A[:12]}"),
                size=2048,
                file_count=4,
                builder="docker",
            ),
        ]
    )


# --- ledger ---------------------------------------------------------------------------------


def test_ledger_round_trip_is_stable_sorted_and_diff_friendly(tmp_path: Path) -> None:
    path = tmp_path / "get_hf" / "mirrored.json"
    ledger = sample_ledger()
    save_ledger(ledger, path)
    text = path.read_text()
    assert load_ledger(path) == ledger
    doc = json.loads(text)
    assert doc["version"] == 1
    assert set(doc["models"]) == {"org/a", "org/pipe", LONG_ID}
    entry = doc["models"]["org/a"]
    assert set(entry) == {
        "repo_id", "repo_type", "revision", "requested_revision", "image", "tags", "digest",
        "size", "file_count", "mirrored_at", "destination", "builder", "license", "format",
        "scan",
    }  # fmt: skip
    assert entry["license"] == "apache-2.0" and entry["tags"] == ["org--a", "org--a--0123456789ab"]
    assert doc["datasets"]["org/data"]["builder"] == "docker"
    assert text == json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    save_ledger(load_ledger(path), path)
    assert path.read_text() == text


def test_missing_ledger_is_empty(tmp_path: Path) -> None:
    ledger = load_ledger(tmp_path / "nope.json")
    assert ledger.entries("model") == [] and ledger.entries("dataset") == []


def test_merge_keeps_the_newer_mirror_and_never_mutates(tmp_path: Path) -> None:
    old = mirrored("org/a", mirrored_at="2026-11-01T00:00:00Z")
    new = mirrored("org/a", revision=SHA_B, mirrored_at="2026-11-02T00:00:00Z")
    base = Ledger().merge([old])
    merged = base.merge([new])
    assert merged.models["org/a"].revision == SHA_B
    assert base.models["org/a"].revision == SHA_A  # the original ledger is unchanged
    # an older result (a slow run finishing late) does not roll back a newer one
    assert merged.merge([old]).models["org/a"].revision == SHA_B
    # the same id as a dataset is another entry
    both = merged.merge([replace(old, repo_type="dataset")])
    assert set(both.models) == {"org/a"} and set(both.datasets) == {"org/a"}
    with pytest.raises(TypeError):
        both.models["x"] = old  # type: ignore[index]


def test_entries_are_sorted_and_tags_map_back(tmp_path: Path) -> None:
    ledger = sample_ledger()
    assert [e.repo_id for e in ledger.entries("model")] == sorted([LONG_ID, "org/a", "org/pipe"])
    found = ledger.lookup_tag(SHORT_TAG)
    assert found is not None and found.repo_id == LONG_ID
    assert ledger.lookup_tag(f"org--pipe--{SHA_B[:12]}").repo_id == "org/pipe"  # type: ignore[union-attr]
    assert ledger.lookup_tag("org--data", repo_type="model") is None
    assert ledger.lookup_tag("org--data", repo_type="dataset") is not None
    assert ledger.lookup_tag("no--such") is None


def test_corrupt_ledger_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "mirrored.json"
    path.write_text('{\n  "version": 1,\n  "models": {,\n}\n')
    with pytest.raises(RecordError) as err:
        load_ledger(path)
    assert str(err.value).startswith(f"{path}:3: not valid JSON")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"version": 2, "models": {}}, "unsupported ledger version 2"),
        ({"version": 1, "models": []}, "'models' must be an object"),
        ({"version": 1, "models": {"org/a": {"repo_id": "org/a"}}}, "missing repo_type"),
    ],
)
def test_invalid_ledger_content_is_refused(tmp_path: Path, doc: object, expected: str) -> None:
    path = tmp_path / "mirrored.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(RecordError, match=re.escape(expected)) as err:
        load_ledger(path)
    assert str(path) in str(err.value)


def test_entry_under_the_wrong_key_or_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mirrored.json"
    save_ledger(Ledger().merge([mirrored("org/a")]), path)
    doc = json.loads(path.read_text())
    doc["datasets"] = {"org/a": doc["models"]["org/a"]}
    path.write_text(json.dumps(doc))
    with pytest.raises(RecordError, match="repo_type is 'model', expected 'dataset'"):
        load_ledger(path)
    doc["datasets"] = {}
    doc["models"] = {"org/b": doc["models"]["org/a"]}
    path.write_text(json.dumps(doc))
    with pytest.raises(RecordError, match="repo_id is 'org/a', not the key"):
        load_ledger(path)


def test_failed_save_leaves_no_temp_file_when_the_target_is_a_folder(tmp_path: Path) -> None:
    target = tmp_path / "mirrored.json"
    target.mkdir()
    (target / "keep").write_text("x")
    with pytest.raises(RecordError, match=f"cannot write {re.escape(str(target))}"):
        save_ledger(sample_ledger(), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mirrored.json"]
    assert (target / "keep").read_text() == "x"


def test_failed_write_keeps_the_old_ledger_intact(tmp_path: Path) -> None:
    """A write that fails half-way (file size limit: a real EFBIG) leaves the old file as it was."""
    path = tmp_path / "mirrored.json"
    save_ledger(Ledger().merge([mirrored("org/old")]), path)
    before = path.read_text()
    big = Ledger().merge([mirrored(f"org/m{i}") for i in range(200)])
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        from pathlib import Path
        sys.path[:0] = [{str(Path(__file__).parent)!r}]
        from test_record import mirrored
        from hf2oci.errors import RecordError
        from hf2oci.record import Ledger, save_ledger
        big = Ledger().merge([mirrored(f"org/m{{i}}") for i in range(200)])
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({len(before) + 100}, {len(before) + 100}))
        try:
            save_ledger(big, Path({str(path)!r}))
        except RecordError as e:
            print("RecordError:", e)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith(f"RecordError: cannot write {path}"), out.stdout + out.stderr
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["mirrored.json"]
    # and without the limit the same save works
    save_ledger(big, path)
    assert load_ledger(path) == big


# --- markdown -------------------------------------------------------------------------------


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE_GOLDEN:
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from tests/golden (HF2OCI_UPDATE_GOLDEN=1)"


def _cells(row: str) -> list[str]:
    """A markdown table row split on unescaped pipes."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", row.strip())[1:-1]]


@pytest.mark.parametrize(
    ("repo_type", "name"), [("model", "models.md"), ("dataset", "datasets.md")]
)
def test_pages_match_golden_files(repo_type: str, name: str) -> None:
    text = render_markdown(sample_ledger(), repo_type)  # type: ignore[arg-type]
    _check_golden(name, text)
    rows = [line for line in text.splitlines() if line.startswith("|")]
    # the escaped `|` keeps every row at the header's 7 columns
    assert {len(_cells(row)) for row in rows} == {7}


def test_model_page_content() -> None:
    text = render_markdown(sample_ledger(), "model")
    assert "do not edit" in text and "generated" in text.lower()
    assert "generated at" not in text.lower()  # deterministic: no timestamp
    rows = [_cells(line) for line in text.splitlines() if line.startswith("| [")]
    assert [r[0] for r in rows] == [
        "[org/a](https://huggingface.co/org/a)",
        "[org/pipe](https://huggingface.co/org/pipe)",
        f"[{LONG_ID}](https://huggingface.co/{LONG_ID})",
    ]
    a_row, pipe_row, long_row = rows
    assert a_row[1:6] == ["`0123456789ab`", f"`org--a`<br>`org--a--{SHA_A[:12]}`", "1.2 GiB", "12",
                          "2026-11-23"]  # fmt: skip
    assert a_row[6] == "`docker pull registry.example:5000/ns/models:org--a`"
    assert pipe_row[1] == r"`fedcba987654` (exp\|2)"
    assert SHORT_TAG in long_row[2]
    assert long_row[6] == (
        f"`skopeo copy oci:oci-images/ns/models:{SHORT_TAG} docker-daemon:ns/models:{SHORT_TAG}`"
    )
    assert 'docker cp "$cid":/REPO ./model' in text
    assert "cid=$(docker create registry.example:5000/ns/models:org--a sh)" in text


def test_dataset_page_links_to_datasets_and_empty_page_says_so() -> None:
    text = render_markdown(sample_ledger(), "dataset")
    assert "(https://huggingface.co/datasets/org/data)" in text
    assert (
        "`skopeo copy oci:oci-images/ns/datasets:org--data docker-daemon:ns/datasets:org--data`"
        in text
    )
    assert "./dataset" in text
    empty = render_markdown(Ledger(), "dataset")
    assert "No datasets are mirrored yet." in empty
    assert "|" not in empty and "docker cp" not in empty
    assert render_markdown(Ledger(), "model") == render_markdown(Ledger(), "model")


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1_288_490_189, "1.2 GiB"),
        (5 * 1024**4, "5.0 TiB"),
    ],
)
def test_human_size(size: int, text: str) -> None:
    assert human_size(size) == text


def test_write_records_writes_only_changed_pages(tmp_path: Path) -> None:
    ledger = sample_ledger()
    assert write_records(ledger, root=tmp_path) == [
        tmp_path / "models.md",
        tmp_path / "datasets.md",
    ]
    assert (tmp_path / "models.md").read_text() == render_markdown(ledger, "model")
    assert write_records(ledger, root=tmp_path) == []
    changed = ledger.merge([mirrored("org/new")])
    assert write_records(changed, root=tmp_path) == [tmp_path / "models.md"]
    assert "org/new" in (tmp_path / "models.md").read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_record_results_updates_ledger_and_pages(tmp_path: Path) -> None:
    get_hf = tmp_path / "get_hf"
    get_hf.mkdir()
    first = record_results([mirrored("org/a")], get_hf=get_hf)
    assert first == [get_hf / "mirrored.json", tmp_path / "models.md", tmp_path / "datasets.md"]
    assert record_results([mirrored("org/a")], get_hf=get_hf) == []
    second = record_results([mirrored("org/data", repo_type="dataset")], get_hf=get_hf)
    assert second == [get_hf / "mirrored.json", tmp_path / "datasets.md"]
    ledger = load_ledger(get_hf / "mirrored.json")
    assert set(ledger.models) == {"org/a"} and set(ledger.datasets) == {"org/data"}
    assert "generated from `get_hf/mirrored.json`" in (tmp_path / "models.md").read_text()


# --- templates ------------------------------------------------------------------------------


def test_templates_refuse_missing_variables() -> None:
    with pytest.raises(jinja2.UndefinedError):
        render("records.md.j2", kind="model", source="x", rows=[], example={})  # no plural
    with pytest.raises(jinja2.UndefinedError, match="url"):
        render(
            "records.md.j2",
            kind="model",
            plural="models",
            source="x",
            rows=[{"repo_id": "org/a"}],  # a row without its other fields
            example={},
            formats=False,
            scans=False,
        )
    with pytest.raises(jinja2.TemplateNotFound):
        render("../pyproject.toml")


@pytest.mark.docker
def test_dockerquote_reads_back_through_docker_build(docker_engine: None, tmp_path: Path) -> None:
    values = {
        "quotes": 'say "hi" \\ back\\slash \\',
        "dollars": "$HOME ${X} $",
        "spaces": "a  b\tc ünï",
        "empty": "",
    }
    lines = ["FROM scratch"] + [
        f"LABEL {dockerquote(k)}={dockerquote(v)}" for k, v in values.items()
    ]
    (tmp_path / "Dockerfile").write_text("\n".join(lines) + "\n")
    client = docker.from_env()
    image, _ = client.images.build(path=str(tmp_path), rm=True, network_mode="none")
    try:
        assert image.labels == values
    finally:
        client.images.remove(image.id, force=True)
    assert dockerquote("two\nlines") == '"two lines"'  # a Dockerfile cannot hold a newline


# --- git ------------------------------------------------------------------------------------


@pytest.fixture
def no_git_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Git sees no user config and no identity in the environment."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / ".gitconfig"))
    for var in ("NAME", "EMAIL"):
        for who in ("AUTHOR", "COMMITTER"):
            monkeypatch.delenv(f"GIT_{who}_{var}", raising=False)
    monkeypatch.delenv("EMAIL", raising=False)


def _clone(bare: Path, dest: Path) -> git.Repo:
    repo = git.Repo.clone_from(str(bare), str(dest))
    with repo.config_writer() as cfg:
        cfg.set_value("user", "name", "Other Person")
        cfg.set_value("user", "email", "other@example.com")
    return repo


@pytest.fixture
def remote_and_work(tmp_path: Path, no_git_identity: None) -> tuple[Path, Path]:
    """A bare remote with one commit on main, and a clone of it (without git identity)."""
    bare = tmp_path / "remote.git"
    git.Repo.init(str(bare), bare=True, initial_branch="main").close()
    seed = _clone(bare, tmp_path / "seed")
    (tmp_path / "seed" / "README.md").write_text("hello\n")
    (tmp_path / "seed" / "get_hf").mkdir()
    (tmp_path / "seed" / "get_hf" / "to_get_models.txt").write_text("org/a\n")
    seed.git.add("-A")
    seed.git.commit("-m", "seed")
    seed.git.push("origin", "HEAD:refs/heads/main")
    seed.close()
    work = tmp_path / "work"
    git.Repo.clone_from(str(bare), str(work)).close()
    return bare, work


def _records(work: Path, *results: Mirrored) -> list[Path]:
    return record_results(list(results), get_hf=work / "get_hf")


def _files_in(repo: git.Repo, rev: str) -> set[str]:
    return set(repo.git.show("--name-only", "--format=", rev).split())


def test_commit_records_commits_only_the_record_files(remote_and_work: tuple[Path, Path]) -> None:
    _, work = remote_and_work
    repo = git.Repo(work)
    (work / "README.md").write_text("edited, not staged\n")
    (work / "staged.txt").write_text("staged by the user\n")
    repo.git.add("staged.txt")
    paths = _records(work, mirrored("org/a"))
    sha = commit_records(work, paths, message=commit_message([mirrored("org/a")]))
    assert sha is not None and sha == repo.head.commit.hexsha
    assert _files_in(repo, sha) == {"get_hf/mirrored.json", "models.md", "datasets.md"}
    commit = repo.head.commit
    assert (commit.author.name, commit.author.email) == DEFAULT_AUTHOR
    assert commit.message.startswith("Mirror 1 model\n\n- org/a @0123456789ab → ")
    # the user's own work is left as it was
    assert repo.git.diff("--cached", "--name-only") == "staged.txt"
    assert repo.git.diff("--name-only") == "README.md"
    # nothing new → no commit
    assert commit_records(work, paths, message="again") is None
    assert repo.head.commit.hexsha == sha
    repo.close()


def test_commit_author_comes_from_the_environment(
    remote_and_work: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, work = remote_and_work
    monkeypatch.setenv("GIT_AUTHOR_NAME", "CI Bot")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "ci@example.com")
    sha = commit_records(work, _records(work, mirrored("org/a")), message="m")
    commit = git.Repo(work).commit(sha)
    assert (commit.author.name, commit.author.email) == ("CI Bot", "ci@example.com")


def test_push_reaches_the_remote(remote_and_work: tuple[Path, Path]) -> None:
    bare, work = remote_and_work
    sha = commit_records(work, _records(work, mirrored("org/a")), message="m", push=True)
    assert git.Repo(bare).commit("main").hexsha == sha


def test_push_race_is_resolved_by_rebase(
    remote_and_work: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bare, work = remote_and_work
    paths = _records(work, mirrored("org/a"))
    # another run (or a person) pushes first, touching an unrelated file
    other = _clone(bare, tmp_path / "other")
    (tmp_path / "other" / "get_hf" / "to_get_models.txt").write_text("org/a\norg/b\n")
    other.git.commit("-am", "add org/b")
    other.git.push("origin", "HEAD:refs/heads/main")
    theirs = other.head.commit.hexsha
    with caplog.at_level(logging.INFO, logger="hf2oci.record"):
        sha = commit_records(work, paths, message="records", push=True)
    assert "rejected" in caplog.text  # the first push lost the race
    remote_head = git.Repo(bare).commit("main")
    assert sha == remote_head.hexsha
    assert remote_head.parents[0].hexsha == theirs  # rebased on top of their commit
    assert _files_in(git.Repo(work), sha) == {"get_hf/mirrored.json", "models.md", "datasets.md"}
    assert (work / "get_hf" / "to_get_models.txt").read_text() == "org/a\norg/b\n"


def test_rebase_conflict_is_aborted_and_raised(
    remote_and_work: tuple[Path, Path], tmp_path: Path
) -> None:
    bare, work = remote_and_work
    other = _clone(bare, tmp_path / "other")
    record_results([mirrored("org/z")], get_hf=tmp_path / "other" / "get_hf")
    other.git.add("-A")
    other.git.commit("-m", "their records")
    other.git.push("origin", "HEAD:refs/heads/main")
    paths = _records(work, mirrored("org/a"))
    mine = commit_records(work, paths, message="my records")
    with pytest.raises(RecordError, match=r"cannot rebase the records onto origin/main") as err:
        commit_records(work, paths, message="my records", push=True)
    assert "\n" not in str(err.value)
    repo = git.Repo(work)
    assert (
        not (work / ".git" / "rebase-merge").exists()
        and not (work / ".git" / "rebase-apply").exists()
    )
    assert repo.head.commit.hexsha == mine and repo.active_branch.name == "main"


def test_push_errors_are_one_line_without_credentials(
    remote_and_work: tuple[Path, Path],
) -> None:
    from servers import free_port

    _, work = remote_and_work
    url = f"https://user:s3cr3t-token@127.0.0.1:{free_port()}/repo.git"
    paths = _records(work, mirrored("org/a"))
    with pytest.raises(RecordError) as err:
        commit_records(work, paths, message="m", push=True, remote=url, branch="main")
    message = str(err.value)
    assert "s3cr3t-token" not in message and "user:" not in message
    assert message.startswith("git push to https://***@127.0.0.1:") and "\n" not in message


def test_redact_hides_credentials_in_urls() -> None:
    assert (
        redact("fatal: 'https://user:tok@host/x.git' failed")
        == "fatal: 'https://***@host/x.git' failed"
    )
    assert redact("http://tok@h:5000/a https://h/b") == "http://***@h:5000/a https://h/b"
    assert redact("git@github.com:org/x.git") == "git@github.com:org/x.git"


def test_commit_records_outside_a_repository(tmp_path: Path) -> None:
    with pytest.raises(RecordError, match="not a git repository"):
        commit_records(tmp_path, [tmp_path / "models.md"], message="m")


def test_commit_message_counts_types() -> None:
    results = [
        mirrored("org/a"),
        mirrored("org/b", tags=("org--b",)),
        mirrored("org/d", repo_type="dataset", image="ns/datasets", tags=("org--d",)),
    ]
    assert commit_message(results) == (
        "Mirror 2 models, 1 dataset\n\n"
        "- org/a @0123456789ab → registry.example:5000/ns/models:org--a\n"
        "- org/b @0123456789ab → registry.example:5000/ns/models:org--b\n"
        "- org/d @0123456789ab → ns/datasets:org--d"
    )


def test_push_gives_up_after_the_retries(
    remote_and_work: tuple[Path, Path], tmp_path: Path
) -> None:
    bare, work = remote_and_work
    paths = _records(work, mirrored("org/a"))
    other = _clone(bare, tmp_path / "other")
    (tmp_path / "other" / "README.md").write_text("moved\n")
    other.git.commit("-am", "move")
    other.git.push("origin", "HEAD:refs/heads/main")
    with pytest.raises(RecordError, match="rejected 1 times: other runs keep pushing"):
        commit_records(work, paths, message="m", push=True, retries=1)
    assert git.Repo(bare).commit("main").hexsha == other.head.commit.hexsha


def test_modelpack_rows_say_their_format_and_how_to_pull_them() -> None:
    ledger = Ledger().merge(
        [
            mirrored("org/a"),
            mirrored("org/pack", format="modelpack", tags=("org--pack",)),
            mirrored(
                "org/local",
                format="modelpack",
                tags=("org--local",),
                image="oci-images/ns/models",
                destination="oci-layout",
            ),
        ]
    )
    page = render_markdown(ledger, "model")
    assert "| mirrored | format | pull |" in page
    rows = {line.split("]")[0][3:]: line for line in page.splitlines() if line.startswith("| [")}
    assert "| image | `docker pull " in rows["org/a"]
    assert (
        "| modelpack | `modctl pull registry.example:5000/ns/models:org--pack`" in rows["org/pack"]
    )
    assert "`hf2oci extract oci:oci-images/ns/models:org--local ./local`" in rows["org/local"]
    assert "any ModelPack client pulls" in page and "docker cp" in page
    # a page of images only keeps its columns
    assert "format" not in render_markdown(Ledger().merge([mirrored("org/a")]), "model")
