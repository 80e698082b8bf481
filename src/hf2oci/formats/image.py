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
    Shards (files named alike but for one number) share a layer with the shards of the next
    numbers, in blocks of consecutive numbers (``_blocks``): one added, removed or changed
    changes its own layer, or splits it in two (163 shards of 4.3 GB in 10 GB layers: 82
    layers, the fewest there can be, and one new layer for any one added or removed). Other
    files go in runs that end after a path that hashes to a boundary (content-defined, like
    a rolling hash over the sorted paths), split where the paths say (``_fit``): one or two
    new groups a change, rarely three. With few files every large file has a layer of its
    own and the small files share one. Too many groups: runs packed tighter, then longer
    runs and blocks, then no blocks, then the fewest groups there can be, else an error
    that names the setting to change.
    """
    check_sizes(sized, max_layer_size)
    small, large = _by_size(sized, small_limit)
    small_cap = _small_cap(max_layer_size)
    total_small = sum(s for _, s in small)
    small_groups: list[tuple[str, ...]] = []
    # too many groups: runs packed tighter, then longer runs (spread), then no number blocks
    for by_number in (True, False):
        spread = 1
        while spread <= 2 * max(1, len(sized)):
            if total_small <= small_cap:
                small_groups = [tuple(p for p, _ in small)] if small else []
            else:  # by folder (sorted paths keep a folder together), then by size
                per = _files_per_group(small, small_cap) * spread
                small_groups = _chunk(small, per=per, cap=small_cap, by_number=by_number)
            room = max(1, max_layers - len(small_groups))
            per = _power_of_two(len(large) / room) * spread
            large_groups = _chunk(
                large, per=per, cap=max_layer_size, room=room, by_number=by_number
            )
            if len(small_groups) + len(large_groups) <= max_layers:
                return small_groups, large_groups
            spread *= 2
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


def _boundary(path: str, per: int) -> bool:
    """Whether a group ends after ``path``: true for about one path in ``per``, by its hash."""
    if per <= 1:
        return True
    digest = hashlib.sha256(path.encode()).digest()
    return int.from_bytes(digest[:8], "big") % per == 0


def _chunk(
    files: Sequence[tuple[str, int]],
    *,
    per: int,
    cap: int | None,
    room: int | None = None,
    by_number: bool = True,
) -> list[tuple[str, ...]]:
    """Groups of about ``per`` files within ``cap``, in path order: a family's files (named
    alike but for one number, as shards are) in blocks of consecutive numbers (``_blocks``),
    the others in runs cut after boundary paths and split to fit. Past ``room`` groups, the
    runs whose last path hashes below a share (1/8, 2/8, … all) take their fewest groups: a
    run is packed or not by its own paths, and the share moves only when the count passes a
    step, not with every file."""
    families: dict[str, list[tuple[int, str, int]]] = {}
    for path, n in files if by_number else ():
        if (key := _numbered(path)) is not None:
            families.setdefault(key[0], []).append((key[1], path, n))
    blocks = [g for f in families.values() if len(f) > 1 for g in _blocks(f, per=per, cap=cap)]
    numbered = {p for g in blocks for p in g}
    runs: list[list[tuple[str, int]]] = [[]]
    for path, n in files:
        if path not in numbered:
            runs[-1].append((path, n))
            if _boundary(path, per):
                runs.append([])
    runs = [r for r in runs if r]
    split = [_fit(r, cap) for r in runs]
    if room is not None and len(blocks) + sum(map(len, split)) > room:
        tight = [_fit(r, cap, fewest=True) for r in runs]
        for eighths in range(1, 9):
            packed = [
                t if len(t) < len(s) and _rank(r[-1][0]) < (eighths << 64) // 8 else s
                for r, s, t in zip(runs, split, tight, strict=True)
            ]
            if len(blocks) + sum(map(len, packed)) <= room:
                break
        split = packed
    return sorted(blocks + [g for groups in split for g in groups])


def _blocks(
    family: Sequence[tuple[int, str, int]], *, per: int, cap: int | None
) -> list[tuple[str, ...]]:
    """A family's ``(number, path, size)`` in blocks of ``per`` consecutive numbers. Past as many
    files of its largest as ``cap`` holds (``k``), blocks span a power of two times ``k``
    numbers (for sparse numbers), halved where one passes ``cap``: a block of ``k`` numbers
    always fits. So a file added or removed changes its own block, or splits it in two."""
    step = math.gcd(*(number for number, _, _ in family)) or 1  # numbered 0, 2, 4…: steps of 2
    holds = per if cap is None else cap // max(n for _, _, n in family)
    span = per if per <= holds else holds * (per >> (holds.bit_length() - 1))
    return _halve([(k // step, p, n) for k, p, n in family], span=span, holds=holds, cap=cap)


def _halve(
    family: Sequence[tuple[int, str, int]], *, span: int, holds: int, cap: int | None
) -> list[tuple[str, ...]]:
    blocks: dict[int, list[tuple[int, str, int]]] = {}
    for file in family:
        blocks.setdefault(file[0] // span, []).append(file)
    out: list[tuple[str, ...]] = []
    for block in blocks.values():
        if span > holds and cap is not None and sum(n for _, _, n in block) > cap:
            out += _halve(block, span=span // 2, holds=holds, cap=cap)
        else:
            out.append(tuple(path for _, path, _ in block))
    return out


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
    so a file added or removed moves one or two groups, rarely three (163 unnumbered files of
    4.3 GB in 10 GB layers, 140 of them: 4 of 280 changes moved 3). It makes ~12% more groups
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
