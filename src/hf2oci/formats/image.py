"""The image format: the base's layers, then the repo's files under ``/REPO``.

Small files share one layer; each large file gets a layer of its own (neighbours share when there
are too many: shards by their numbers), so the same file gives the same layer in every revision.
A file's bytes come from disk or straight from the hub: that only decides whether its layer is a
``TarLayer`` (digest computed first) or a ``StreamLayer`` (digest learnt while the sink writes
it). Layers whose content key (paths + hub hashes) is known at the destination are reused
without a download.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from hf2oci import labels as L
from hf2oci.errors import PackError
from hf2oci.layercache import LayerCache
from hf2oci.oci.image import (
    MT_LAYER_TAR,
    Artifact,
    Base,
    ImageIndex,
    Layer,
    assemble,
    canonical_json,
    sha256_digest,
)
from hf2oci.oci.layers import StreamLayer, TarLayer
from hf2oci.oci.tarstream import (
    LINK_MODE,
    ChunkSource,
    TarEntry,
    data_offsets,
    entries_for_files,
    entries_for_streams,
)
from hf2oci.units import human_size

log = logging.getLogger(__name__)

#: where the repo's files live inside the image
REPO_DIR = "REPO"
#: a relative link to REPO_DIR, where KServe's modelcar looks for the model
MODELCAR_DIR = "models"
#: overlayfs and CRI-O fail near 127 layers: an image has at most this many, the base's included
MAX_LAYERS = 100
#: the repo's own layers when the base is not known (the base has its own, the index one)
MAX_REPO_LAYERS = 64
#: small files share one layer up to this size in all; beyond it they are grouped by folder and
#: size into layers of about this size, so a changed small file re-uploads little
SMALL_GROUP_BYTES = 256 << 20
#: files below this size share one layer; each larger file gets a layer of its own, so the
#: same weights file gives the same layer digest in every revision and repo
DEFAULT_SMALL_FILE_LIMIT = 1 << 20
#: bump when the tar bytes for the same files change, so old content keys stop matching
TAR_FORMAT = "hf2oci-tar-1"
#: the file index: where each file's bytes are (layer, offset) and what the hub says they
#: hash to, so a server finds any file with one small read (outside /REPO: never extracted)
INDEX_PATH = ".hf2oci/files.json"
INDEX_VERSION = 1


@dataclass(frozen=True)
class PackFile:
    """One file to put under ``/REPO``."""

    path: str
    size: int
    #: where the bytes come from: a file on disk, or a hub stream (one pass, hash-checked)
    source: Path | ChunkSource
    #: the hub's hashes: sha256 (LFS files) and git blob sha1; None when a hook may have
    #: changed the file
    sha256: str | None = None
    blob_id: str | None = None

    @property
    def streamed(self) -> bool:
        return not isinstance(self.source, Path)

    @property
    def hub_hash(self) -> str | None:
        """What the content key names the file by: ``sha256:…`` or ``gitsha1:…``."""
        if self.sha256:
            return f"sha256:{self.sha256}"
        return f"gitsha1:{self.blob_id}" if self.blob_id else None


def scan(root: Path) -> list[PackFile]:
    """Every regular file under ``root`` (a snapshot, or what a prepare hook left in OUT_DIR)."""
    files = []
    real_root = root.resolve()
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink() and not p.resolve().is_relative_to(real_root):
            raise PackError(f"{rel} links outside the output folder")
        if p.is_file():
            source = p.resolve()
            try:
                size = source.stat().st_size
            except OSError as e:
                raise PackError(f"cannot read {rel!r}: {e.strerror}") from e
            files.append(PackFile(rel, size, source))
    return files


class LayerTooBig(PackError):
    """A single file is larger than the layer size limit: no layer can hold it."""


def layer_budget(base_layers: int) -> int:
    """How many layers a repo's files may take: the image stays within ``MAX_LAYERS`` with the
    base's layers and the file index's."""
    return max(1, MAX_LAYERS - base_layers - 1)


def check_sizes(sized: Sequence[tuple[str, int]], max_layer_size: int | None) -> None:
    """LayerTooBig for the first file (by path) that no layer could hold."""
    if max_layer_size is None:
        return
    for path, size in sorted(sized):
        if size > max_layer_size:
            raise LayerTooBig(
                f"{path} is {human_size(size)}, over the layer size limit of "
                f"{human_size(max_layer_size)}: set max_layer_size in get_hf/config.yaml (or "
                "--max-layer-size) if the registry takes bigger layers, or exclude the file"
            )


def check_layer_count(
    sized: Sequence[tuple[str, int]],
    max_layer_size: int | None,
    *,
    small_limit: int = DEFAULT_SMALL_FILE_LIMIT,
) -> None:
    """PackError when the files cannot fit the layer count on any base (cheap, for plan time):
    the fewest groups there can be, over what an image on a base with no layer may have."""
    budget = layer_budget(0)
    small, large = _by_size(sized, small_limit)
    small_bytes = sum(s for _, s in small)
    least = len(_first_fit(large, max_layer_size)) + -(-small_bytes // _small_cap(max_layer_size))
    if least > budget:
        raise PackError(_too_many_layers(least, budget))


def _too_many_layers(need: int, budget: int) -> str:
    return (
        f"the files need {need} layers, over the {budget} this image can have: set a higher "
        "max_layer_size in get_hf/config.yaml (or --max-layer-size) if the registry takes "
        "bigger layers, or exclude files"
    )


def split_files(
    sized: Sequence[tuple[str, int]],
    *,
    small_limit: int = DEFAULT_SMALL_FILE_LIMIT,
    max_layers: int = MAX_REPO_LAYERS,
    max_layer_size: int | None = None,
) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """``(groups of small files, groups of large files)``, at most ``max_layers`` in all, none
    over ``max_layer_size``.

    Which files share a layer depends on the files alone, so a new revision re-uploads little.
    Shards (files named alike but for one number) share layers in blocks of consecutive
    numbers (``_Family``), joined into the next level's blocks one at a time as the count
    needs: one added, removed or changed changes its own layer and at most one join (163
    shards of 4.3 GB in 10 GB layers: 1.20 new layers on average, at most 2; a dataset that
    grows a file at a time never re-uploads more than 2). Other files go in runs that end
    after a path that hashes to a boundary (content-defined, like a rolling hash over the
    sorted paths), split where the paths say (``_fit``): one or two new groups a change,
    rarely more. With few files every large file has a layer of its own and the small files
    share one. Too many groups: blocks joined, runs packed tighter, the next level; then the
    small files' groups longer; then no blocks; then the fewest groups there can be, else an
    error that names the setting to change.
    """
    check_sizes(sized, max_layer_size)
    small, large = _by_size(sized, small_limit)
    small_cap = _small_cap(max_layer_size)
    total_small = sum(s for _, s in small)
    small_groups: list[tuple[str, ...]] = []
    for by_number in (True, False):
        for spread in [1] if total_small <= small_cap else _doublings(len(small)):
            if total_small <= small_cap:
                small_groups = [tuple(p for p, _ in small)] if small else []
            else:  # by folder (sorted paths keep a folder together), then by size
                level = (_files_per_group(small, small_cap) * spread).bit_length() - 1
                small_groups = _chunk(small, level=level, cap=small_cap, by_number=by_number)
            room = max(1, max_layers - len(small_groups))
            for level in range(max(1, 2 * len(large)).bit_length()):  # 2 ** level up to 2n
                large_groups = _chunk(
                    large, level=level, cap=max_layer_size, room=room, by_number=by_number
                )
                if len(small_groups) + len(large_groups) <= max_layers:
                    return small_groups, large_groups
    large_groups = _first_fit(large, max_layer_size)  # the fewest groups there can be
    if len(small_groups) + len(large_groups) <= max_layers:
        return small_groups, large_groups
    raise PackError(_too_many_layers(len(small_groups) + len(large_groups), max_layers))


def _by_size(
    sized: Sequence[tuple[str, int]], small_limit: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """``(small files, large files)``, each sorted by path."""
    ordered = sorted(sized)
    return [f for f in ordered if f[1] < small_limit], [f for f in ordered if f[1] >= small_limit]


def _small_cap(max_layer_size: int | None) -> int:
    return min(SMALL_GROUP_BYTES, max_layer_size or SMALL_GROUP_BYTES)


def _first_fit(files: Sequence[tuple[str, int]], cap: int | None) -> list[tuple[str, ...]]:
    """The fewest groups of consecutive files within ``cap`` (a file added moves every group
    after it: the last resort)."""
    groups: dict[int, list[str]] = {}
    for (path, _), k in zip(files, _greedy_groups([n for _, n in files], cap), strict=True):
        groups.setdefault(k, []).append(path)
    return [tuple(g) for g in groups.values()]


def _greedy_groups(sizes: Sequence[int], cap: int | None) -> list[int]:
    """Each size's group, counted from 0, when each joins the group before it while that fits
    ``cap``: the fewest groups of consecutive sizes there can be."""
    out: list[int] = []
    total = 0
    for n in sizes:
        if out and (cap is None or total + n <= cap):
            total += n
            out.append(out[-1])
        else:
            total = n
            out.append(out[-1] + 1 if out else 0)
    return out


def _files_per_group(files: Sequence[tuple[str, int]], target: int) -> int:
    average = max(1, sum(s for _, s in files) // max(1, len(files)))
    return _power_of_two(target / average)


def _power_of_two(x: float) -> int:
    """The power of two at or above ``x`` (at least 1): groupings change only when the repo's
    shape changes by a factor of two, not with every file added."""
    n = 1
    while n < x:
        n *= 2
    return n


def _doublings(n: int) -> list[int]:
    """1, 2, 4, … up to twice ``n``."""
    return [1 << k for k in range(max(1, 2 * n).bit_length())]


def _boundary(path: str, per: int) -> bool:
    """Whether a group ends after ``path``: true for about one path in ``per``, by its hash."""
    if per <= 1:
        return True
    digest = hashlib.sha256(path.encode()).digest()
    return int.from_bytes(digest[:8], "big") % per == 0


def _chunk(
    files: Sequence[tuple[str, int]],
    *,
    level: int,
    cap: int | None,
    room: int | None = None,
    by_number: bool = True,
) -> list[tuple[str, ...]]:
    """Groups of files within ``cap``, about ``2 ** level`` files each: a family's (files named
    alike but for one number, as shards are) in blocks of consecutive numbers (``_Family``),
    the others in runs cut after boundary paths and split to fit (``_fit``).

    Past ``room`` groups, blocks are joined into those of the next level, one at a time in
    hash order, until the groups fit: one file more joins one block more, so the count steps
    into the next level a join at a time, not all at once. Still too many: the runs whose
    last path hashes below a share (1/8, 2/8, … all) take their fewest groups."""
    named: dict[str, list[tuple[int, str, int]]] = {}
    for path, n in files if by_number else ():
        if (number := _numbered(path)) is not None:
            named.setdefault(number[0], []).append((number[1], path, n))
    families = {f: _Family.of(m, cap) for f, m in named.items() if len(m) > 1}
    numbered = {path for f in families.values() for _, path, _ in f.files}
    runs: list[list[tuple[str, int]]] = [[]]
    for path, n in files:
        if path not in numbered:
            runs[-1].append((path, n))
            if _boundary(path, 1 << level):
                runs.append([])
    runs = [r for r in runs if r]
    split = [_fit(r, cap) for r in runs]
    blocks = {f: family.blocks(level) for f, family in families.items()}
    count = sum(map(len, split)) + sum(map(len, blocks.values()))
    if room is None or count <= room:
        return sorted([g for groups in split for g in groups] + _flat(blocks))
    joins = [(_rank(f"{f}\0{key}"), f, key, saved) for f, family in families.items()
             for key, saved in family.joins(level)]  # fmt: skip
    joined: dict[str, set[int]] = {}
    for _, f, key, saved in sorted(joins):
        if count <= room:
            break
        joined.setdefault(f, set()).add(key)
        count -= saved
    for f, keys in joined.items():
        blocks[f] = families[f].blocks(level, joined=keys)
    if count > room:
        tight = [_fit(r, cap, fewest=True) for r in runs]
        for eighths in range(1, 9):
            packed = [
                t if len(t) < len(s) and _rank(r[-1][0]) < (eighths << 64) // 8 else s
                for r, s, t in zip(runs, split, tight, strict=True)
            ]
            if count - sum(map(len, split)) + sum(map(len, packed)) <= room:
                break
        split = packed
    return sorted([g for groups in split for g in groups] + _flat(blocks))


def _flat(blocks: Mapping[str, list[tuple[str, ...]]]) -> list[tuple[str, ...]]:
    return [g for groups in blocks.values() for g in groups]


@dataclass(frozen=True)
class _Family:
    """Files named alike but for one number, as ``(number, path, size)``: numbers count in
    steps of their gcd (0, 2, 4…: steps of 2). ``holds``: how many of its largest file a
    layer holds (None: no size limit)."""

    files: tuple[tuple[int, str, int], ...]
    holds: int | None
    cap: int | None

    @classmethod
    def of(cls, members: Sequence[tuple[int, str, int]], cap: int | None) -> _Family:
        step = math.gcd(*(number for number, _, _ in members)) or 1
        holds = None if cap is None else cap // max(n for _, _, n in members)
        return cls(tuple(sorted((k // step, p, n) for k, p, n in members)), holds, cap)

    def span(self, level: int) -> int:
        """How many numbers a block spans at ``level``: 1, then the odd part of ``holds``
        doubled up to ``holds``, then doubled on. Each is a multiple of the one before, so a
        level's blocks join into the next level's; blocks past ``holds`` numbers are halved
        where they pass the limit (``_halve``), and a block of ``holds`` always fits."""
        if self.holds is None:
            return 1 << level
        odd = self.holds >> ((self.holds & -self.holds).bit_length() - 1)
        chain = [1] + [odd << k for k in range((self.holds // odd).bit_length()) if odd << k > 1]
        return chain[level] if level < len(chain) else self.holds << (level - len(chain) + 1)

    def blocks(
        self, level: int, joined: set[int] | frozenset[int] = frozenset()
    ) -> list[tuple[str, ...]]:
        """The groups of the blocks of ``level``, and of the next level's blocks whose keys
        are ``joined``. A file added or removed changes its own block, or splits it in two."""
        span, up = self.span(level), self.span(level + 1)
        blocks: dict[tuple[int, int], list[tuple[int, str, int]]] = {}
        for file in self.files:
            key = (up, file[0] // up) if file[0] // up in joined else (span, file[0] // span)
            blocks.setdefault(key, []).append(file)
        return [g for (w, _), block in sorted(blocks.items()) for g in self._halve(block, w)]

    def joins(self, level: int) -> list[tuple[int, int]]:
        """``(key, groups saved)`` of each block of the next level that fits the limit and
        would join two or more of this level's groups."""
        span, up = self.span(level), self.span(level + 1)
        regions: dict[int, dict[int, list[tuple[int, str, int]]]] = {}
        for file in self.files:
            regions.setdefault(file[0] // up, {}).setdefault(file[0] // span, []).append(file)
        out = []
        for key, region in regions.items():
            groups = sum(len(self._halve(b, span)) for b in region.values())
            if groups > 1 and _fits([(p, n) for b in region.values() for _, p, n in b], self.cap):
                out.append((key, groups - 1))
        return out

    def _halve(self, block: Sequence[tuple[int, str, int]], span: int) -> list[tuple[str, ...]]:
        """A block as groups: whole where it fits the limit (or spans ``holds`` numbers or
        fewer), else its halves, each the same way."""
        paths = [(p, n) for _, p, n in block]
        if self.holds is None or span <= self.holds or _fits(paths, self.cap):
            return [tuple(p for p, _ in paths)]
        halves: dict[int, list[tuple[int, str, int]]] = {}
        for file in block:
            halves.setdefault(file[0] // (span // 2), []).append(file)
        return [g for half in halves.values() for g in self._halve(half, span // 2)]


def _fits(files: Sequence[tuple[str, int]], cap: int | None) -> bool:
    return cap is None or sum(n for _, n in files) <= cap


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


def _fit(
    run: Sequence[tuple[str, int]], cap: int | None, *, fewest: bool = False
) -> list[tuple[str, ...]]:
    """``run`` as groups of at most ``cap`` bytes.

    Each file is joined to the next one, in the order of their paths' hashes, unless that would
    pass ``cap``: whether two files share a group depends on them and their near neighbours,
    so a file added or removed moves one or two groups, rarely three (140 unnumbered files of
    4.3 GB in 10 GB layers: 4 of 280 changes moved 3). It makes ~12% more groups
    than the fewest; with ``fewest``, the run is split after the file whose path hashes lowest
    among the places that cost no extra group, then each side the same way (up to 6 moved)."""
    sizes = [n for _, n in run]
    if cap is None or sum(sizes) <= cap or len(run) == 1:
        return [tuple(p for p, _ in run)]
    if not fewest:
        return _merge(run, cap)
    # the fewest groups of each head and each tail (greedy from either end is optimal)
    heads, tails = _greedy_counts(sizes, cap), _greedy_counts(sizes[::-1], cap)[::-1]
    places = [k for k in range(1, len(run)) if heads[k] + tails[k] == heads[-1]]
    cut = min(places, key=lambda k: _rank(run[k - 1][0]))
    return _fit(run[:cut], cap, fewest=True) + _fit(run[cut:], cap, fewest=True)


def _greedy_counts(sizes: Sequence[int], cap: int) -> list[int]:
    """``out[k]``: the fewest groups within ``cap`` of the first ``k`` sizes, in order."""
    return [0, *(k + 1 for k in _greedy_groups(sizes, cap))]


def _merge(run: Sequence[tuple[str, int]], cap: int) -> list[tuple[str, ...]]:
    """Join each file to the next, lowest path hash first, where the two groups fit ``cap``."""
    first = list(range(len(run)))  # the first file of each file's group
    last = list(range(len(run)))  # by first file: the group's last file
    total = [n for _, n in run]  # by first file: the group's bytes
    for i in sorted(range(len(run) - 1), key=lambda k: (_rank(run[k][0]), k)):
        a, b = first[i], i + 1  # i ends its group and i + 1 starts one: not joined yet
        if total[a] + total[b] <= cap:
            for k in range(b, last[b] + 1):
                first[k] = a
            total[a] += total[b]
            last[a] = last[b]
    groups: dict[int, list[str]] = {}
    for k, (path, _) in enumerate(run):
        groups.setdefault(first[k], []).append(path)
    return [tuple(g) for g in groups.values()]


def _rank(path: str) -> int:
    return int.from_bytes(hashlib.sha256(path.encode()).digest()[8:16], "big")


def group_files(
    sized: Sequence[tuple[str, int]],
    *,
    small_limit: int = DEFAULT_SMALL_FILE_LIMIT,
    max_layers: int = MAX_REPO_LAYERS,
    max_layer_size: int | None = None,
) -> list[tuple[str, ...]]:
    """The layers' file groups in image order: the small files' layers first (deterministic)."""
    small, large = split_files(
        sized, small_limit=small_limit, max_layers=max_layers, max_layer_size=max_layer_size
    )
    return small + large


def layer_annotations(group: Sequence[str], hashes: Mapping[str, str]) -> dict[str, str]:
    """Annotations of a layer: its content key, and its file name when it holds one file."""
    if any(p not in hashes for p in group):
        return {}
    key = sha256_digest(
        canonical_json({"format": TAR_FORMAT, "files": [[p, hashes[p]] for p in group]})
    )
    out = {L.CONTENT_KEY: key}
    if len(group) == 1:
        out[L.TITLE] = group[0]
    return out


class Reuse:
    """Layers the destination already holds, by content key: from the image now at the tag and
    from the local cache of layers streamed before (each checked at the destination first)."""

    def __init__(
        self,
        stored_layer: Callable[[str, int], Layer | None],
        current_manifest: Mapping[str, object] | None,
        cache: LayerCache | None = None,
    ) -> None:
        self.stored_layer = stored_layer
        self.cache = cache or LayerCache()
        self.known = self.cache.load()
        layers = (current_manifest or {}).get("layers")
        for desc in layers if isinstance(layers, list) else []:
            key = (desc.get("annotations") or {}).get(L.CONTENT_KEY)
            if key and desc.get("mediaType") == MT_LAYER_TAR:
                self.known[key] = (str(desc["digest"]), int(desc["size"]))

    def find(self, key: str | None) -> Layer | None:
        if not key or key not in self.known:
            return None
        return self.stored_layer(*self.known[key])

    def remember(self, key: str, digest: str, size: int) -> None:
        self.cache.add(key, digest, size)


def build_image(
    files: Sequence[PackFile],
    *,
    base: Base,
    labels: Mapping[str, str],
    created: str,
    small_limit: int = DEFAULT_SMALL_FILE_LIMIT,
    max_layer_size: int | None = None,
    reuse: Reuse | None = None,
) -> Artifact:
    """The image of ``files`` on ``base``: one image, or an index of one per platform whose
    repo layers are the same objects (written once, same digests everywhere). Configs and
    manifests are made once the sink has written the layers (streamed ones learn their digest
    then).

    The file index gives layer positions in the first platform's image; a reader of another
    one shifts them by where it finds the index layer (it is always the last).
    """
    if not files:
        raise PackError("no file to pack: the filters keep nothing")
    by_path = {f.path: f for f in files}
    if len(by_path) != len(files):
        raise PackError("a file is listed twice")
    hashes = {f.path: h for f in files if (h := f.hub_hash)}
    layers: list[Layer] = []
    notes: list[dict[str, str]] = []
    index: list[dict[str, object]] = []
    groups = group_files(
        [(f.path, f.size) for f in files],
        small_limit=small_limit,
        max_layers=layer_budget(base.layer_count),
        max_layer_size=max_layer_size,
    )
    first = len(base.images[0].layers)
    for group in groups:
        note = layer_annotations(group, hashes)
        members = [by_path[p] for p in group]
        entries = _entries(members)
        offsets = data_offsets(entries)
        position = first + len(layers)
        index += [_index_entry(f, position, offsets[f"{REPO_DIR}/{f.path}"]) for f in members]
        layers.append(_layer(members, entries, note.get(L.CONTENT_KEY), reuse))
        notes.append(note)
    layers.append(_index_layer(index))
    notes.append({L.FILE_INDEX: str(INDEX_VERSION), L.TITLE: INDEX_PATH})
    images = [
        assemble(
            image,
            layers,
            labels=labels,
            annotations=labels,
            created=created,
            layer_annotations=notes,
        )
        for image in base.images
    ]
    return images[0] if len(images) == 1 else ImageIndex(images, annotations=labels)


def _entries(members: Sequence[PackFile]) -> list[TarEntry]:
    if not any(f.streamed for f in members):
        local = [(f.path, cast(Path, f.source)) for f in members]
        return entries_for_files(local, prefix=REPO_DIR)
    return entries_for_streams([(f.path, f.source, f.size) for f in members], prefix=REPO_DIR)


def _layer(
    members: Sequence[PackFile], entries: Sequence[TarEntry], key: str | None, reuse: Reuse | None
) -> Layer:
    if not any(f.streamed for f in members):
        return TarLayer(entries)
    if reuse is not None:
        found = reuse.find(key)
        if found is not None:
            log.info("%s: reusing layer %s", members[0].path, found.digest[:19])
            return found
    layer = StreamLayer(entries)
    if reuse is not None and key:
        layer.on_digest = lambda digest: reuse.remember(key, digest, layer.size)
    return layer


def _index_entry(f: PackFile, layer: int, offset: int) -> dict[str, object]:
    entry: dict[str, object] = {"path": f.path, "size": f.size, "layer": layer, "offset": offset}
    if f.blob_id:
        entry["blob_id"] = f.blob_id
    if f.sha256:
        entry["sha256"] = f.sha256
    return entry


def _index_layer(index: list[dict[str, object]]) -> TarLayer:
    """The last layer: the file index, and ``/models`` → ``REPO`` for KServe's modelcar (which
    reads ``/proc/<pid>/root/models`` from another container: the link must be relative)."""
    data = canonical_json({"version": INDEX_VERSION, "files": index})
    entries = entries_for_streams([(INDEX_PATH, lambda: iter([data]), len(data))], prefix="")
    link = TarEntry(MODELCAR_DIR, None, mode=LINK_MODE, linkname=REPO_DIR)
    return TarLayer(sorted([*entries, link], key=lambda e: e.name))
