"""``plan.decide``: every outcome, from values alone (no hub, no registry)."""

from __future__ import annotations

import pytest

from hf2oci import labels as L
from hf2oci.intake.hub import HubFile, RepoState
from hf2oci.pack.plan import decide, tags_for
from hf2oci.spec import RepoSpec

COMMIT = "a" * 40
OLD = "b" * 40
FILES = (
    HubFile("config.json", 10, blob_id="1" * 40),
    HubFile("model.safetensors", 100, sha256="2" * 64, blob_id="3" * 40),
    HubFile("pytorch_model.bin", 100, sha256="4" * 64, blob_id="5" * 40),
)


def state(requested: str = "main", files: tuple[HubFile, ...] = FILES) -> RepoState:
    return RepoState("org/m", "model", requested, COMMIT, files, "2024-01-01T00:00:00Z")


def labels_of(spec: RepoSpec, *, commit: str = COMMIT, ref: str | None = "main") -> dict[str, str]:
    out = {L.REPO_ID: spec.repo_id, L.REVISION: commit, L.FILTER: spec.filter_key}
    if ref is not None:
        out[L.REF] = ref
    return out


SPEC = RepoSpec("org/m")


def test_new_repo_is_mirrored_with_both_tags_immutable_first() -> None:
    action = decide(SPEC, state(), None)
    assert (action.kind, action.reason) == ("mirror", "not mirrored yet")
    assert action.tags == tags_for("org/m", COMMIT) == ("org--m--aaaaaaaaaaaa", "org--m")
    assert action.files == ("config.json", "model.safetensors", "pytorch_model.bin")
    assert action.size == 210


def test_unchanged_repo_is_skipped() -> None:
    action = decide(SPEC, state(), labels_of(SPEC))
    assert (action.kind, action.reason) == ("skip", f"up to date at {COMMIT[:12]}")
    assert action.tags and action.files  # a skip still says what the image holds


def test_moved_revision_is_mirrored_again() -> None:
    action = decide(SPEC, state(), labels_of(SPEC, commit=OLD))
    assert action.kind == "mirror" and action.reason == f"revision moved {OLD[:12]} → {COMMIT[:12]}"


def test_changed_filter_is_mirrored_again() -> None:
    spec = RepoSpec("org/m", preset="safetensors")
    action = decide(spec, state(), labels_of(SPEC))
    assert (action.kind, action.reason) == ("mirror", "file selection changed")
    assert action.files == ("config.json", "model.safetensors")


def test_changed_ref_is_mirrored_again_and_old_images_without_one_are_kept() -> None:
    spec = RepoSpec("org/m", revision="v1")
    action = decide(spec, state("v1"), labels_of(spec, ref="main"))
    assert (action.kind, action.reason) == ("mirror", "revision asked for changed: main → v1")
    assert decide(spec, state("v1"), labels_of(spec, ref=None)).kind == "skip"


def test_forced_repo_is_mirrored_even_when_up_to_date() -> None:
    action = decide(SPEC, state(), labels_of(SPEC), force=True)
    assert (action.kind, action.reason) == ("mirror", "forced")


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        (RepoSpec("org/m", include=("*.txt",)), "the filters keep no file"),
        (RepoSpec("org/m", preset="gguf:Q4_K_M"), "no .gguf file"),
    ],
)
def test_a_selection_that_keeps_nothing_fails(spec: RepoSpec, reason: str) -> None:
    action = decide(spec, state(), None)
    assert action.kind == "fail" and reason in action.reason and not action.tags


def test_a_file_over_the_layer_limit_goes_in_parts_or_fails_at_plan_time_with_one_line() -> None:
    big = (*FILES, HubFile("huge.gguf", 10**9, sha256="6" * 64, blob_id="7" * 40))
    assert decide(SPEC, state(files=big), None, max_layer_size=10**8).kind == "mirror"  # parts
    # a limit that holds no part at all
    action = decide(SPEC, state(), None, max_layer_size=1000)
    assert action.kind == "fail" and "\n" not in action.reason
    assert action.reason.startswith("max_layer_size 1000 B is too small to carry")
    # parts are checked by the file's sha256: a file the hub keeps out of LFS has none
    plain = (*FILES, HubFile("huge.json", 10**9, blob_id="8" * 40))
    failed = decide(SPEC, state(files=plain), None, max_layer_size=10**8)
    assert failed.kind == "fail" and failed.reason.startswith("huge.json is over max_layer_size")
    assert "\n" not in failed.reason
    # a file the filters drop does not count
    kept = RepoSpec("org/m", exclude=("*.json",))
    assert decide(kept, state(files=plain), None, max_layer_size=10**8).kind == "mirror"


def test_files_that_need_too_many_layers_fail_at_plan_time_with_one_line() -> None:
    shards = tuple(
        HubFile(f"model-{i:05d}.safetensors", 43 * 10**8, sha256=f"{i:064x}", blob_id=f"{i:040x}")
        for i in range(250)
    )
    failed = decide(SPEC, state(files=shards), None, max_layer_size=10 * 10**9)
    assert failed.kind == "fail" and "\n" not in failed.reason
    assert failed.reason.startswith("the files need 125 layers, over the 99")
    assert "max_layer_size" in failed.reason
    # 196 of them fit (98 layers): no failure here; the grouping packs them (test_format_image)
    assert decide(SPEC, state(files=shards[:196]), None, max_layer_size=10 * 10**9).kind == (
        "mirror"
    )


@pytest.mark.parametrize(
    ("registry", "limit"),
    [
        ("ghcr.io", 10 * 10**9),
        ("public.ecr.aws", 10_000 * 2**20),
        ("123456789012.dkr.ecr.eu-west-1.amazonaws.com", 52_000 * 2**20),
        ("quay.io", 20 * 10**9),
        ("docker.io", None),
        ("127.0.0.1:5000", None),
        (None, None),
    ],
)
def test_known_registry_layer_limits(registry: str | None, limit: int | None) -> None:
    from hf2oci.pack.destination import default_max_layer_size

    assert default_max_layer_size(registry) == limit


def test_format_and_platform_changes_re_mirror_and_huge_modelpacks_fail_first() -> None:
    image = RepoSpec("org/m")
    pack = RepoSpec("org/m", format="modelpack")
    as_image = labels_of(image)
    assert decide(pack, state(), as_image).reason == "format changed: image → modelpack"
    as_pack = {**labels_of(pack), L.FORMAT: "modelpack"}
    assert decide(pack, state(), as_pack).kind == "skip"
    assert decide(image, state(), as_pack).reason == "format changed: modelpack → image"
    # platforms: an index's label against what is asked; one platform carries no label
    two = ("linux/amd64", "linux/arm64")
    multi = {**as_image, L.PLATFORMS: ",".join(two)}
    assert decide(image, state(), multi, platforms=two[::-1]).kind == "skip"
    assert decide(image, state(), multi, platforms=two[:1]).reason.startswith("platforms changed")
    assert decide(image, state(), as_image, platforms=two).reason.startswith("platforms changed")
    assert decide(image, state(), as_image, platforms=two[:1]).kind == "skip"
    many = tuple(HubFile(f"f/{i:05d}.json", 10) for i in range(4001))
    failed = decide(pack, state(files=many), None)
    assert failed.kind == "fail"
    assert "4001 files" in failed.reason and "format=image" in failed.reason
    assert decide(image, state(files=many), None).kind == "mirror"
