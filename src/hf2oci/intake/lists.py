"""``get_hf/to_get_models.txt`` and ``to_get_datasets.txt`` → RepoSpecs, with ``file:line`` errors.

Line grammar::

    REPO_ID[@REVISION] [include=GLOB[,GLOB…]] [exclude=GLOB[,GLOB…]] [preset=NAME]   # comment
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from pathlib import Path
from typing import cast

from hf2oci.errors import Hf2ociError, ListError
from hf2oci.intake.filters import parse_preset
from hf2oci.naming import validate_repo_id
from hf2oci.spec import FORMATS, REPO_TYPES, Format, RepoSpec, RepoType, plural

#: the list files in get_hf/, and the repo type of their lines
LIST_FILES: tuple[tuple[str, RepoType], ...] = tuple(
    (f"to_get_{plural(t)}.txt", t) for t in REPO_TYPES
)
OPTIONS = ("include", "exclude", "preset", "format")
OPTIONS_HELP = (
    "include=GLOB[,GLOB…], exclude=GLOB[,GLOB…], preset=safetensors|gguf:QUANT|none, "
    "format=image|modelpack"
)

# '#' starts a comment at the start of a line or after whitespace; elsewhere it belongs to a word
_COMMENT = re.compile(r"(?:^|\s)#.*$")
_OPTION = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*)=(.*)")


class _BadLine(Exception):
    """Why one line is invalid (becomes a ListError with the file and line)."""


def parse_list(
    text: str, *, path: str, repo_type: RepoType
) -> tuple[list[RepoSpec], list[ListError]]:
    """Parse a whole list; every bad line gives one ListError and the others still count."""
    specs: list[RepoSpec] = []
    errors: list[ListError] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        try:
            spec = _parse_line(line, repo_type=repo_type, origin=f"{path}:{number}")
        except _BadLine as e:
            errors.append(ListError(path, number, str(e)))
            continue
        if spec is None:
            continue
        # the hub treats ids case-insensitively, and two lines would fight over one tag
        key = spec.repo_id.lower()
        if key in seen:
            errors.append(
                ListError(path, number, f"{spec.repo_id!r} is already listed on line {seen[key]}")
            )
            continue
        seen[key] = number
        specs.append(spec)
    return specs, errors


def _parse_line(line: str, *, repo_type: RepoType, origin: str) -> RepoSpec | None:
    content = _COMMENT.sub("", line).strip()
    if not content:
        return None
    words = content.split()
    # words up to the first option are the repo id: "bad id with spaces" is one bad id
    n_id = next((i for i, w in enumerate(words) if _OPTION.fullmatch(w)), len(words))
    if n_id == 0:
        raise _BadLine(f"the line must start with a repo id, not {words[0]!r}")
    if n_id > 1 and _is_repo_id(words[0].partition("@")[0]):
        if words[0].endswith("@"):
            raise _BadLine(f"empty revision after {words[0]!r} (no space after '@')")
        raise _BadLine(f"unexpected {words[1]!r} after the repo id; options are {OPTIONS_HELP}")
    repo_id, at, revision = " ".join(words[:n_id]).partition("@")
    try:
        validate_repo_id(repo_id)
    except Hf2ociError as e:
        raise _BadLine(str(e)) from e
    if at and not revision:
        raise _BadLine(f"empty revision after '{repo_id}@'")
    options: dict[str, str] = {}
    for word in words[n_id:]:
        match = _OPTION.fullmatch(word)
        if not match:
            raise _BadLine(f"unexpected {word!r}; options are {OPTIONS_HELP}")
        key, value = match.groups()
        if key not in OPTIONS:
            raise _BadLine(
                f"unknown option {key + '='!r}{_did_you_mean(key, OPTIONS, '=')}; "
                f"options are {OPTIONS_HELP}"
            )
        if key in options:
            raise _BadLine(f"{key}= given twice (separate several globs with ',')")
        options[key] = value
    try:
        preset = parse_preset(options["preset"]) if "preset" in options else None
    except Hf2ociError as e:
        raise _BadLine(str(e)) from e
    fmt = options.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise _BadLine(f"format={fmt!r}: choose {' or '.join(FORMATS)}")
    return RepoSpec(
        repo_id=repo_id,
        repo_type=repo_type,
        revision=revision or None,
        include=_globs("include", options.get("include")),
        exclude=_globs("exclude", options.get("exclude")),
        preset=preset,
        format=cast(Format, fmt),
        origin=origin,
    )


def _did_you_mean(word: str, choices: tuple[str, ...], suffix: str = "") -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0] + suffix!r}?)" if close else ""


def _is_repo_id(text: str) -> bool:
    try:
        validate_repo_id(text)
    except Hf2ociError:
        return False
    return True


def _globs(key: str, value: str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    globs = tuple(value.split(","))
    if not all(globs):
        raise _BadLine(f"empty glob in {key}={value!r}")
    return globs


def format_line(spec: RepoSpec) -> str:
    """The list line that parses back to ``spec`` (its origin aside)."""
    words = [spec.repo_id + (f"@{spec.revision}" if spec.revision else "")]
    if spec.include:
        words.append("include=" + ",".join(spec.include))
    if spec.exclude:
        words.append("exclude=" + ",".join(spec.exclude))
    if spec.preset:
        words.append(f"preset={spec.preset}")
    if spec.format:
        words.append(f"format={spec.format}")
    return " ".join(words)


def read_lists(
    get_hf_dir: Path, *, display_root: Path | None = None, format: Format = "image"
) -> tuple[list[RepoSpec], list[ListError]]:
    """Parse both list files of ``get_hf_dir`` (a missing one is empty); a line that names no
    format gets ``format`` (config.yaml's), except the default image: the plan's lines stay as
    written.

    Paths in origins and messages are relative to ``display_root`` (default: the current
    directory) when the file is under it.
    """
    specs: list[RepoSpec] = []
    errors: list[ListError] = []
    for name, repo_type in LIST_FILES:
        path = get_hf_dir / name
        if not path.exists():
            continue
        shown = _display(path, display_root)
        try:
            data = path.read_bytes()
        except OSError as e:
            errors.append(ListError(shown, 1, f"cannot read the file: {e.strerror or e}"))
            continue
        text, decode_errors = _decode(data, shown)
        got, bad = parse_list(text, path=shown, repo_type=repo_type)
        if format != "image":  # None reads as image everywhere
            got = [s if s.format else dataclasses.replace(s, format=format) for s in got]
        specs.extend(got)
        errors.extend(sorted(decode_errors + bad, key=lambda e: e.line))
    return specs, errors


def _decode(data: bytes, shown: str) -> tuple[str, list[ListError]]:
    """Decode line by line, so a stray Latin-1 byte costs its own line and no other."""
    lines: list[str] = []
    errors: list[ListError] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            # utf-8-sig: editors on Windows may start the file with a byte order mark
            lines.append(raw.decode("utf-8-sig" if number == 1 else "utf-8"))
        except UnicodeDecodeError as e:
            byte = raw[e.start]
            errors.append(
                ListError(shown, number, f"not UTF-8 (byte 0x{byte:02x} at column {e.start + 1})")
            )
            lines.append("")
    return "\n".join(lines), errors


def _display(path: Path, root: Path | None) -> str:
    base = os.path.abspath(root if root is not None else Path.cwd())
    full = os.path.abspath(path)
    if os.path.commonpath([base, full]) == base:
        return Path(os.path.relpath(full, base)).as_posix()
    return str(path)
