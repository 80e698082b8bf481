"""Where a repo's files are in the images hf2oci makes, as builders and readers both see it.

The files live under ``/REPO``; ``.hf2oci/files.json`` (outside it: never extracted) indexes
where each file's bytes are. A file bigger than the registry's layer size limit is carried as
consecutive *parts*, one layer each, named ``NAME.part-001-of-012`` beside where the file goes:
``cat NAME.part-* > NAME`` (the numbers are zero-padded, so the shell's order is theirs) puts it
back, and ``.hf2oci/join.sh`` does that for every such file, checking each against its sha256.
Pure: names and sizes only.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from hf2oci.labels import PARTS

#: where the repo's files live inside the image
REPO_DIR = "REPO"
#: a relative link to REPO_DIR, where KServe's modelcar looks for the model
MODELCAR_DIR = "models"
#: the file index: where each file's bytes are (layer, offset) and what the hub says they
#: hash to, so a server finds any file with one small read (outside /REPO: never extracted)
INDEX_PATH = ".hf2oci/files.json"
#: version 1: each file at one (layer, offset); version 2: files carried in parts list them
INDEX_VERSION = 1
INDEX_VERSION_PARTS = 2
#: beside the index in an image with parts: a POSIX sh script that joins them in a copy of
#: /REPO (``sh /.hf2oci/join.sh FOLDER``), for init containers and ``docker cp`` users
JOIN_PATH = ".hf2oci/join.sh"

#: parts are whole pages of the file
PAGE = 4096

_PART = re.compile(r"(?P<path>.+)\.part-(?P<index>\d{3,})-of-(?P<count>\d{3,})")


@dataclass(frozen=True)
class Part:
    """Bytes ``[start, start + size)`` of the file at ``path``, carried as ``name``."""

    path: str
    index: int  # from 1
    count: int
    start: int
    size: int

    @property
    def name(self) -> str:
        return part_name(self.path, self.index, self.count)

    @property
    def end(self) -> int:
        return self.start + self.size


def part_name(path: str, index: int, count: int) -> str:
    """``path.part-007-of-012``: at least three digits, as many as ``count`` has."""
    width = max(3, len(str(count)))
    return f"{path}.part-{index:0{width}d}-of-{count:0{width}d}"


def parse_part_name(name: str) -> tuple[str, int, int] | None:
    """``(path, index, count)`` of a part's name, None for another name."""
    m = _PART.fullmatch(name)
    if m is None or len(m["index"]) != len(m["count"]):
        return None
    index, count = int(m["index"]), int(m["count"])
    if not 1 <= index <= count or part_name(m["path"], index, count) != name:
        return None
    return m["path"], index, count


_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Join:
    """How a file carried in parts is put back: ``names`` in order, each ``part_size`` bytes
    but the last (the rest of ``size``), the whole hashing to ``sha256``."""

    sha256: str
    size: int
    part_size: int
    names: tuple[str, ...]

    def start(self, index: int) -> int:
        """Where part ``index`` (from 1) goes in the file."""
        return (index - 1) * self.part_size

    def length(self, index: int) -> int:
        return min(self.part_size, self.size - self.start(index))

    def to_json(self) -> dict[str, object]:
        return {
            "sha256": self.sha256, "size": self.size, "part_size": self.part_size,
            "parts": list(self.names),
        }  # fmt: skip

    @classmethod
    def of(cls, sha256: str, parts: Sequence[Part]) -> Join:
        return cls(sha256, parts[-1].end, parts[0].size, tuple(p.name for p in parts))


def parts_of(labels: Mapping[str, str]) -> dict[str, Join]:
    """Each parted file's ``Join`` by path, from an image's ``io.hf2oci.parts`` label ({}
    without one), checked: parts named as ``split`` names them, in order, sizes that add up.
    An image's labels are as untrusted as its files: ValueError for anything else."""
    raw = labels.get(PARTS)
    if not raw:
        return {}
    doc = json.loads(raw)
    if not isinstance(doc, dict):
        raise ValueError(f"label {PARTS} is not a JSON object")
    out = {}
    for path, join in doc.items():
        if not isinstance(join, dict):
            raise ValueError(f"label {PARTS}: {path!r} is not described")
        sha256, size, per, names = (join.get(k) for k in ("sha256", "size", "part_size", "parts"))
        if not (isinstance(sha256, str) and _SHA256.fullmatch(sha256)):
            raise ValueError(f"label {PARTS}: {path!r} has no sha256")
        if not (isinstance(names, list) and len(names) >= 2):
            raise ValueError(f"label {PARTS}: {path!r} has no parts")
        if names != [part_name(path, i + 1, len(names)) for i in range(len(names))]:
            raise ValueError(f"label {PARTS}: the parts of {path!r} are not named in order")
        if not (
            isinstance(size, int) and isinstance(per, int) and per > 0
            and (len(names) - 1) * per < size <= len(names) * per
        ):  # fmt: skip
            raise ValueError(f"label {PARTS}: the parts of {path!r} do not add up to its size")
        out[str(path)] = Join(sha256, size, per, tuple(names))
    return out


#: a layer's bytes besides one member's data: ``overhead(name, data_size)``
Overhead = Callable[[str, int], int]


def split(path: str, size: int, limit: int, overhead: Overhead) -> list[Part]:
    """The parts that carry a file of ``size`` bytes in layers of at most ``limit`` bytes each
    (a part's layer is its data and ``overhead``), each but the last as large as that allows
    in whole 4 KiB pages (so a reader can write each part at its place with O_DIRECT).
    ValueError when not even one page fits."""
    count = max(2, math.ceil(size / max(1, limit)))
    for _ in range(64):  # the overhead grows with the name's digits: settles in a step or two
        room = limit - overhead(part_name(path, count, count), limit)
        per = room // PAGE * PAGE
        if per <= 0:
            raise ValueError(f"a layer of {limit} bytes holds no part of {path!r}")
        need = max(2, math.ceil(size / per))
        if need == count:
            break
        count = need
    return [Part(path, i + 1, count, i * per, min(per, size - i * per)) for i in range(count)]


def join_script(joins: Mapping[str, Join]) -> bytes:
    """``.hf2oci/join.sh`` for each parted file's ``Join``: in the folder it is given (a
    copy of /REPO), each file is put back from its parts and checked, then the parts removed;
    a file that does not match its sha256 stops it (exit 1) and leaves its parts."""
    lines = [
        "#!/bin/sh",
        "# Puts back the files hf2oci carried in parts, in a copy of /REPO:",
        "#   sh /.hf2oci/join.sh FOLDER",
        "# Each file is the concatenation of its parts (cat NAME.part-* > NAME), checked",
        "# against the sha256 the hub gives for it.",
        "set -eu",
        'cd "${1:?usage: join.sh FOLDER}"',
        "j() {",
        "  f=$1 sum=$2; shift 2",
        '  [ -e "$1" ] || { [ -f "$f" ] && return 0; echo "hf2oci: $f: its parts are missing" >&2; exit 1; }',  # noqa: E501
        '  cat "$@" > "$f.joining"',
        '  if [ "$(sha256sum < "$f.joining" | cut -d " " -f 1)" != "$sum" ]; then',
        '    rm -f "$f.joining"; echo "hf2oci: $f: its parts do not join to sha256 $sum" >&2',
        "    exit 1",
        "  fi",
        '  mv "$f.joining" "$f" && rm -f "$@"',
        "}",
    ]
    for path, join in sorted(joins.items()):
        lines.append(" ".join(["j", shlex.quote(path), join.sha256, *map(shlex.quote, join.names)]))
    return ("\n".join(lines) + "\n").encode()
