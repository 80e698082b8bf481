"""Which of a repo's files share a layer: a pure function of the files' paths and sizes.

The rule, to check by hand. Sort the files by path. Files under ``small_file_limit`` share one
layer; past 256 MiB in all, they go in runs that end after a path whose hash is a boundary (one
path in about as many as make 256 MiB), each run cut in order at 256 MiB. Every other file has
a layer of its own while the image's layer budget allows. When it does not, the large files go
in *units* of a level ℓ = 1, 2, …: a shard (a file named like another but for one number, as
``model-00001-of-00163.safetensors``) goes with its family's shards whose numbers, over the
numbers' gcd, fall in the same block of ``span(ℓ) = holds · 2^(ℓ-1)`` (``holds``: how many of the
family's largest file a layer takes), and any other file with the run of paths that ends after
a path whose hash ends in ℓ zero bits. Each unit is cut in order into the fewest groups within
the layer size limit. A unit of level ℓ+1 is units of level ℓ joined, so the rule takes the
first level whose groups fit once some of its units are joined into their next-level unit: one
join at a time, in the order of the next-level unit's hash, only joins that save a layer, until
the count fits. No level fits: an error naming ``max_layer_size``. A file added or removed so
changes the groups of its own unit, and at most the join the count needs one more (or fewer) of.

"Within the limit" counts the layer as a registry does: the tar's headers, padding and end
blocks included. A file that no layer within the limit can hold is carried in parts
(``repofiles.split``), each a layer of its own, never grouped.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from hf2oci.errors import PackError
from hf2oci.oci.tarstream import TarSize
from hf2oci.repofiles import REPO_DIR, Part, split
from hf2oci.units import human_size

#: overlayfs and CRI-O fail near 127 layers: an image has at most this many, the base's included
MAX_LAYERS = 100
#: the repo's own layers when the base is not known (the base has its own, the index one)
MAX_REPO_LAYERS = 64
#: small files share one layer up to this size in all; beyond it they go in runs of about this
#: size, so a changed small file re-uploads little
SMALL_GROUP_BYTES = 256 << 20
#: files below this size share layers; each larger file gets a layer of its own (while the
#: budget allows), so the same weights file gives the same layer digest in every revision
DEFAULT_SMALL_FILE_LIMIT = 1 << 20

Sized = tuple[str, int]
Group = tuple[str, ...]


def layer_budget(base_layers: int) -> int:
    """How many layers a repo's files may take: the image stays within ``MAX_LAYERS`` with the
    base's layers and the file index's."""
    return max(1, MAX_LAYERS - base_layers - 1)


def layer_bytes(files: Sequence[Sized]) -> int:
    """The exact size of the tar layer that holds ``files`` under ``/REPO``."""
    size = TarSize(REPO_DIR)
    for path, n in files:
        size.add(path, n)
    return size.total


def _overhead(name: str, size: int) -> int:
    return layer_bytes([(name, size)]) - size


def carry(sized: Sequence[Sized], max_layer_size: int | None) -> tuple[list[Sized], list[Part]]:
    """``(files carried whole, parts of the others)``: a file whose layer alone would be over
    ``max_layer_size`` goes in parts. PackError when a part's name is a file's too, or the
    limit holds no part at all."""
    if max_layer_size is None:
        return sorted(sized), []
    whole: list[Sized] = []
    parts: list[Part] = []
    for path, size in sorted(sized):
        if layer_bytes([(path, size)]) <= max_layer_size:
            whole.append((path, size))
            continue
        try:
            parts += split(path, size, max_layer_size, _overhead)
        except ValueError as e:
            raise PackError(
                f"max_layer_size {human_size(max_layer_size)} is too small to carry {path} "
                "in parts: set a bigger one in get_hf/config.yaml (or --max-layer-size)"
            ) from e
    names = {p for p, _ in whole}
    for part in parts:
        if part.name in names:
            raise PackError(
                f"{part.path} goes in parts, and one's name, {part.name}, is a file of the repo "
                "too: exclude one of them"
            )
    return whole, parts


def check_layer_count(
    sized: Sequence[Sized],
    max_layer_size: int | None,
    *,
    small_limit: int = DEFAULT_SMALL_FILE_LIMIT,
) -> None:
    """PackError, at plan time, when the files fit no image's layer count (on a base with no
    layer): the grouping itself, run early."""
    split_files(
        sized, small_limit=small_limit, max_layers=layer_budget(0), max_layer_size=max_layer_size
    )


def group_files(
    sized: Sequence[Sized],
    *,
    small_limit: int = DEFAULT_SMALL_FILE_LIMIT,
    max_layers: int = MAX_REPO_LAYERS,
    max_layer_size: int | None = None,
) -> list[Group]:
    """The layers' file groups in image order: the small files' layers first."""
    small, large = split_files(
        sized, small_limit=small_limit, max_layers=max_layers, max_layer_size=max_layer_size
    )
    return small + large


def split_files(
    sized: Sequence[Sized],
    *,
    small_limit: int = DEFAULT_SMALL_FILE_LIMIT,
    max_layers: int = MAX_REPO_LAYERS,
    max_layer_size: int | None = None,
) -> tuple[list[Group], list[Group]]:
    """``(groups of small files, groups of large files)`` by the module's rule: at most
    ``max_layers`` in all, none over ``max_layer_size``, whatever order ``sized`` is in. A
    file carried in parts is one group per part, each the part's name."""
    ordered, parts = carry(sized, max_layer_size)
    small = [f for f in ordered if f[1] < small_limit]
    large = [f for f in ordered if f[1] >= small_limit]
    small_groups = _small_groups(small, min(SMALL_GROUP_BYTES, max_layer_size or SMALL_GROUP_BYTES))
    alone: list[Group] = [(part.name,) for part in parts]
    room = max_layers - len(small_groups) - len(alone)
    units = _Units.of(large, max_layer_size)
    level, groups = 0, units.groups(0)
    while True:
        count = sum(map(len, groups.values()))
        if count <= room:
            return small_groups, sorted([*alone, *(g for gs in groups.values() for g in gs)])
        if units.top(level):
            need = len(small_groups) + len(alone) + count
            raise PackError(_too_many_layers(need, max_layers))
        up = units.groups(level + 1)
        parents = units.parents(level)
        children: dict[_Key, list[_Key]] = {}
        for key in groups:
            children.setdefault(parents[key], []).append(key)
        joined: set[_Key] = set()
        for parent in sorted(children, key=_Units.rank):
            saved = sum(len(groups[k]) for k in children[parent]) - len(up[parent])
            if saved > 0 and count > room:
                joined.add(parent)
                count -= saved
        if count <= room:
            out = [g for k, gs in groups.items() if parents[k] not in joined
                   for g in gs] + [g for k in joined for g in up[k]]  # fmt: skip
            return small_groups, sorted([*alone, *out])
        level, groups = level + 1, up  # the next level's units, cut once


def _holds(largest: Sized, cap: int) -> int:
    """How many files like ``largest`` a layer within ``cap`` holds, their tar entries (and
    folders', counted for each: a little short at worst) and the end blocks included."""
    end = layer_bytes([])
    return max(1, (cap - end) // (layer_bytes([largest]) - end))


def _too_many_layers(need: int, budget: int) -> str:
    return (
        f"the files need {need} layers, over the {budget} this image can have: set a higher "
        "max_layer_size in get_hf/config.yaml (or --max-layer-size) if the registry takes "
        "bigger layers, or exclude files"
    )


def _small_groups(small: Sequence[Sized], cap: int) -> list[Group]:
    """One group, or runs of about ``cap`` bytes cut at path-hash boundaries and at ``cap``."""
    if layer_bytes(small) <= cap:
        return [tuple(p for p, _ in small)] if small else []
    total = sum(n for _, n in small)
    per = max(1, math.ceil(cap * len(small) / total))  # files in ``cap`` bytes, on average
    runs = _runs(small, per.bit_length() - 1)
    return [g for run in runs.values() for g in _cut(run, cap)]


def _runs(files: Sequence[Sized], level: int) -> dict[str, list[Sized]]:
    """Runs of ``files`` (sorted by path), each ending after a path whose hash ends in
    ``level`` zero bits, by the path that ends them ("" for the last)."""
    runs: dict[str, list[Sized]] = {}
    run: list[Sized] = []
    for path, n in files:
        run.append((path, n))
        if _hash(path) & ((1 << level) - 1) == 0:
            runs[path] = run
            run = []
    if run:
        runs[""] = run
    return runs


def _cut(unit: Sequence[Sized], cap: int | None) -> list[Group]:
    """``unit`` in order as the fewest groups whose layers are within ``cap``: each file joins
    the group before it while that layer fits."""
    groups: list[list[str]] = []
    size = TarSize(REPO_DIR)
    for path, n in unit:
        if groups and (cap is None or size.total + size.cost(path, n) <= cap):
            groups[-1].append(path)
        else:
            groups.append([path])
            size = TarSize(REPO_DIR)
        if cap is not None:
            size.add(path, n)
    return [tuple(g) for g in groups]


#: a unit: ``("block", family, block number)`` of shards, or ``("run", the path ending it)``
_Key = tuple[str, ...]


@dataclass(frozen=True)
class _Units:
    """The large files, as shards by family (``(number over the gcd, path, size)``) and the
    others by path, with each family's ``holds``."""

    families: dict[str, list[tuple[int, str, int]]]
    holds: dict[str, int | None]
    others: list[Sized]
    cap: int | None

    @classmethod
    def of(cls, files: Sequence[Sized], cap: int | None) -> _Units:
        named: dict[str, list[tuple[int, str, int]]] = {}
        for path, n in files:
            if (number := _numbered(path)) is not None:
                named.setdefault(number[0], []).append((number[1], path, n))
        families = {f: m for f, m in named.items() if len(m) > 1}
        shards = {p for m in families.values() for _, p, _ in m}
        for f, members in families.items():
            step = math.gcd(*(k for k, _, _ in members)) or 1
            families[f] = sorted((k // step, p, n) for k, p, n in members)
        holds = {f: None if cap is None else _holds(max(m, key=lambda x: x[2])[1:], cap)
                 for f, m in families.items()}  # fmt: skip
        return cls(families, holds, [f for f in files if f[0] not in shards], cap)

    def span(self, family: str, level: int) -> int:
        holds = self.holds[family]
        if holds is None:
            return 1 << level
        return 1 if level == 0 else holds << (level - 1)

    def groups(self, level: int) -> dict[_Key, list[Group]]:
        """Each unit of ``level``, cut to the size limit."""
        units: dict[_Key, list[Sized]] = {}
        for f, members in self.families.items():
            span = self.span(f, level)
            for k, p, n in members:
                units.setdefault(("block", f, str(k // span)), []).append((p, n))
        for end, run in _runs(self.others, level).items():
            units[("run", end)] = run
        return {key: _cut(unit, self.cap) for key, unit in units.items()}

    def parents(self, level: int) -> dict[_Key, _Key]:
        """Each unit of ``level``: the unit of ``level + 1`` it is part of."""
        out: dict[_Key, _Key] = {}
        for f, members in self.families.items():
            span, up = self.span(f, level), self.span(f, level + 1)
            for k, _, _ in members:
                out[("block", f, str(k // span))] = ("block", f, str(k // up))
        ends = {p: end for end, run in _runs(self.others, level + 1).items() for p, _ in run}
        for end in _runs(self.others, level):
            out[("run", end)] = ("run", ends[end] if end else "")
        return out

    def top(self, level: int) -> bool:
        """Whether every family is one block and the others one run at ``level``."""
        for f, members in self.families.items():
            span = self.span(f, level)
            if members[0][0] // span != members[-1][0] // span:
                return False
        return len(_runs(self.others, level)) <= 1

    @staticmethod
    def rank(key: _Key) -> int:
        return _hash("\0".join(key))


@functools.lru_cache(maxsize=1 << 17)
def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


_OF = re.compile(r"(\d+)-of-\d+")
_DIGITS = re.compile(r"\d+")


@functools.lru_cache(maxsize=1 << 17)
def _numbered(path: str) -> tuple[str, int] | None:
    """``(family, number)`` of a numbered file name, None for another: the number is the one
    before ``-of-`` (``model-00001-of-00163.safetensors``; a suffix after the count, such as
    a content hash, is left out of the family), else the name's last number."""
    folder, _, name = path.rpartition("/")
    if of := list(_OF.finditer(name)):
        start, end = of[-1].span(1)
        rest = name[of[-1].end() :]
        tail = name[end : of[-1].end()] + (rest[rest.index(".") :] if "." in rest else "")
    elif digits := list(_DIGITS.finditer(name)):
        start, end = digits[-1].span()
        tail = name[end:]
    else:
        return None
    return f"{folder}/{name[:start]}\0{tail}", int(name[start:end])
