"""The list files: grammar, every error with file:line, both files read from get_hf/."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hf2oci.errors import ListError
from hf2oci.intake.lists import format_line, parse_list, read_lists
from hf2oci.spec import RepoSpec

PATH = "get_hf/to_get_models.txt"


def parse(text: str) -> tuple[list[RepoSpec], list[ListError]]:
    return parse_list(text, path=PATH, repo_type="model")


def only_error(text: str) -> str:
    specs, errors = parse(text)
    assert specs == []
    assert len(errors) == 1, errors
    return str(errors[0])


def test_plain_ids_comments_and_blank_lines() -> None:
    text = "# models\n\n  facebook/opt-125m  \r\nbert/base   # trailing comment\n\t\n"
    specs, errors = parse(text)
    assert errors == []
    assert specs == [RepoSpec("facebook/opt-125m"), RepoSpec("bert/base")]
    assert [s.origin for s in specs] == [f"{PATH}:3", f"{PATH}:4"]


def test_all_options_in_any_order() -> None:
    specs, errors = parse(
        "org/a@v1.0 preset=gguf:q4_k_m exclude=*.md include=*.gguf,config.json\n"
        "org/b include=dir/ preset=safetensors\n"
        "org/c@0123456789abcdef0123456789abcdef01234567 preset=none\n"
        "org/d format=modelpack\n"
    )
    assert errors == []
    assert specs == [
        RepoSpec(
            "org/a",
            revision="v1.0",
            include=("*.gguf", "config.json"),
            exclude=("*.md",),
            preset="gguf:Q4_K_M",
        ),
        RepoSpec("org/b", include=("dir/",), preset="safetensors"),
        RepoSpec("org/c", revision="0123456789abcdef0123456789abcdef01234567"),
        RepoSpec("org/d", format="modelpack"),
    ]


def test_hash_inside_a_word_is_not_a_comment() -> None:
    specs, errors = parse("org/a include=*#1*.bin # comment")
    assert errors == [] and specs[0].include == ("*#1*.bin",)


def test_dataset_type_is_set() -> None:
    specs, _ = parse_list("org/data", path="x", repo_type="dataset")
    assert specs == [RepoSpec("org/data", repo_type="dataset")]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("bad id with spaces", "invalid repo id 'bad id with spaces': ' ' is not allowed"),
        ("gpt2", "invalid repo id 'gpt2': it needs a namespace"),
        ("https://huggingface.co/org/name", "write 'org/name', not a URL"),
        ("org/name@", "empty revision"),
        ("org/name@ main", "empty revision"),
        ("org/name safetensors", "unexpected 'safetensors' after the repo id; options are"),
        ("org/name preset=fp16", "unknown preset 'fp16': valid presets are safetensors"),
        ("org/name preset=gguf:Q4-K", "write gguf:QUANT"),
        ("org/name inclde=*.json", "unknown option 'inclde=' (did you mean 'include='?)"),
        ("org/name include=a include=b", "include= given twice"),
        ("org/name include=", "empty glob in include=''"),
        ("org/name exclude=a,,b", "empty glob in exclude='a,,b'"),
        ("org/name include=a stray", "unexpected 'stray'"),
        ("include=*.json", "must start with a repo id"),
        ("org/n#x", "'#' is not allowed"),
        ("org/name format=kitops", "format='kitops': choose image or modelpack"),
    ],
)
def test_bad_lines(line: str, message: str) -> None:
    got = only_error(f"# header\n{line}\n")
    assert got.startswith(f"{PATH}:2: ")
    assert message in got
    assert "\n" not in got


def test_every_bad_line_is_reported_and_good_lines_still_count() -> None:
    specs, errors = parse("a/ok\nbad one\nb/ok preset=x\nc/ok\nd/ok@\n")
    assert [s.repo_id for s in specs] == ["a/ok", "c/ok"]
    assert [(e.path, e.line) for e in errors] == [(PATH, 2), (PATH, 3), (PATH, 5)]
    assert errors[1].reason.startswith("unknown preset 'x'")


def test_duplicates_name_the_earlier_line() -> None:
    specs, errors = parse("org/a\n# c\norg/b\nORG/A@dev\n")
    assert [s.repo_id for s in specs] == ["org/a", "org/b"]
    assert [str(e) for e in errors] == [f"{PATH}:4: 'ORG/A' is already listed on line 1"]


repo_ids = st.sampled_from(["org/a", "Org-1/name.v2", "a_b/c_d"])
revisions = st.none() | st.sampled_from(["main", "v1.0", "refs/pr/1", "0123456789abcdef" * 2])
globs = st.lists(st.sampled_from(["*.json", "dir/", "a?b", "[ab]*", "**/x.bin"]), max_size=3)
presets = st.none() | st.sampled_from(["safetensors", "gguf:Q4_K_M", "gguf:IQ2_XXS"])


@given(repo_ids, revisions, globs, globs, presets)
def test_format_line_round_trips(
    repo_id: str, revision: str | None, include: list[str], exclude: list[str], preset: str | None
) -> None:
    spec = RepoSpec(repo_id, "model", revision, tuple(include), tuple(exclude), preset)
    specs, errors = parse(format_line(spec) + "  # note")
    assert errors == [] and specs == [spec]


def test_format_line_example() -> None:
    spec = RepoSpec("org/a", revision="dev", include=("*.json", "x/"), preset="safetensors")
    assert format_line(spec) == "org/a@dev include=*.json,x/ preset=safetensors"
    assert format_line(RepoSpec("org/a")) == "org/a"


def test_read_lists_reads_both_files_with_display_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    get_hf = tmp_path / "get_hf"
    get_hf.mkdir()
    (get_hf / "to_get_models.txt").write_text("org/m\nx y\n")
    (get_hf / "to_get_datasets.txt").write_text("# d\norg/d@v2\norg/m\n")
    monkeypatch.chdir(tmp_path)
    specs, errors = read_lists(Path("get_hf"))
    assert specs == [
        RepoSpec("org/m"),
        RepoSpec("org/d", repo_type="dataset", revision="v2"),
        RepoSpec("org/m", repo_type="dataset"),
    ]
    assert [s.origin for s in specs] == [
        "get_hf/to_get_models.txt:1",
        "get_hf/to_get_datasets.txt:2",
        "get_hf/to_get_datasets.txt:3",
    ]
    assert [str(e).split(": ")[0] for e in errors] == ["get_hf/to_get_models.txt:2"]
    # an absolute path under the display root is shown relative to it
    specs, _ = read_lists(get_hf.resolve(), display_root=get_hf.resolve())
    assert specs[0].origin == "to_get_models.txt:1"
    # outside the display root: shown as given
    other = tmp_path / "elsewhere"
    other.mkdir()
    specs, _ = read_lists(get_hf.resolve(), display_root=other)
    assert specs[0].origin == f"{get_hf.resolve() / 'to_get_models.txt'}:1"


def test_missing_files_are_empty(tmp_path: Path) -> None:
    assert read_lists(tmp_path) == ([], [])
    (tmp_path / "to_get_datasets.txt").write_text("org/d\n")
    specs, errors = read_lists(tmp_path)
    assert errors == [] and specs == [RepoSpec("org/d", repo_type="dataset")]


def test_non_utf8_costs_only_its_line(tmp_path: Path) -> None:
    (tmp_path / "to_get_models.txt").write_bytes(
        b"\xef\xbb\xbforg/first\norg/caf\xe9\norg/ok\n\xff\n"
    )
    specs, errors = read_lists(tmp_path, display_root=tmp_path)
    assert [s.repo_id for s in specs] == ["org/first", "org/ok"]
    assert [str(e) for e in errors] == [
        "to_get_models.txt:2: not UTF-8 (byte 0xe9 at column 8)",
        "to_get_models.txt:4: not UTF-8 (byte 0xff at column 1)",
    ]


def test_errors_are_sorted_by_line_within_a_file(tmp_path: Path) -> None:
    (tmp_path / "to_get_models.txt").write_bytes(b"bad one\n\xff\nalso bad\n")
    _, errors = read_lists(tmp_path, display_root=tmp_path)
    assert [e.line for e in errors] == [1, 2, 3]


def test_an_unreadable_list_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "to_get_models.txt").mkdir()
    specs, errors = read_lists(tmp_path, display_root=tmp_path)
    assert specs == []
    assert len(errors) == 1 and str(errors[0]).startswith("to_get_models.txt:1: cannot read")
