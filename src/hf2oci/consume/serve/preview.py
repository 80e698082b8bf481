"""What a file's page shows of its content without reading it whole: a safetensors tensor
table, a GGUF header, a dataset file's first rows. Every reader goes through ``open_capped``
(the project's ``RangeReader`` over the image's blob) and stops at a byte cap: a file of any
size costs a page at most ``READ_LIMIT`` bytes."""

from __future__ import annotations

import csv
import io
import json
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from hf2oci.consume.serve.files import RepoFile
from hf2oci.gguf import FILE_TYPES, KNOWN_QUANT, GgufArray, gguf_header
from hf2oci.oci.source import RangeReader

#: the most a preview reads of one file
READ_LIMIT = 16 << 20
#: a safetensors header read when at most this long
HEADER_LIMIT = 8 << 20
#: rows shown of a dataset file, cells cut to CELL_LIMIT characters
ROW_LIMIT = 20
CELL_LIMIT = 200
COLUMN_LIMIT = 50
#: text data (CSV, JSON Lines) read this far for its first rows
TEXT_ROWS_BYTES = 256 << 10
#: a whole JSON file parsed when at most this long
JSON_LIMIT = 1 << 20
DATA_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")


class ReadLimit(OSError):
    """A preview would read more than its cap."""


class Capped:
    """A repo file as ``Ranged`` for ``RangeReader``: parts read by Range requests, never past
    the file's end, and no more than ``limit`` bytes in all (ReadLimit beyond)."""

    def __init__(self, f: RepoFile, limit: int = READ_LIMIT) -> None:
        self.f, self.limit = f, limit
        self.spent = 0

    @property
    def size(self) -> int:
        return self.f.size

    def read_range(self, start: int, length: int) -> bytes:
        length = max(0, min(length, self.f.size - start))
        if self.spent + length > self.limit:
            raise ReadLimit(f"more than {self.limit} bytes")
        self.spent += length
        return b"".join(self.f.chunks(start, length))


def open_capped(f: RepoFile, block: int) -> tuple[io.BufferedReader, Capped]:
    """A seekable file over ``f`` whose reads are whole (the buffered reader keeps reading
    Range parts until it has what was asked), and its byte count."""
    capped = Capped(f)
    return io.BufferedReader(RangeReader(capped, block=block), buffer_size=block), capped


# -- safetensors ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Tensors:
    rows: list[tuple[str, str, str, int]]
    parameters: int
    metadata: dict[str, str]
    shown: int


def safetensors_header(f: RepoFile) -> Tensors | None:
    """The tensor table from a safetensors header (names, dtypes, shapes, parameter count):
    the 8-byte length, then the header, read as one Range each."""
    if f.size < 8:
        return None
    (length,) = struct.unpack("<Q", b"".join(f.chunks(0, 8)))
    if length > min(HEADER_LIMIT, f.size - 8):
        return None
    try:
        doc = json.loads(b"".join(f.chunks(8, length)))
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    rows = []
    total = 0
    for name, info in doc.items():
        if name == "__metadata__" or not isinstance(info, dict):
            continue
        found = info.get("shape")
        shape: list[Any] = found if isinstance(found, list) else []
        count = math.prod(int(d) for d in shape if isinstance(d, int)) if shape else 1
        total += count
        rows.append((str(name), str(info.get("dtype", "?")), "×".join(map(str, shape)), count))
    meta = doc.get("__metadata__")
    metadata = {str(k): str(v)[:200] for k, v in meta.items()} if isinstance(meta, dict) else {}
    rows.sort()
    return Tensors(rows[:2000], total, metadata, len(rows))


# -- GGUF ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gguf:
    """A GGUF file's header: the facts people look for, then every key."""

    architecture: str
    quantization: str
    context_length: int | None
    tensors: int
    version: int
    items: list[tuple[str, str]]
    complete: bool


def gguf_view(f: RepoFile) -> Gguf | None:
    """The header of a GGUF file, read by Range requests up to ``READ_LIMIT`` (a tokenizer's
    vocabulary is skipped string by string; a header longer than the cap shows what came
    before it); None for a file that is not GGUF."""
    reader, capped = open_capped(f, block=1 << 20)
    found = gguf_header(reader)
    if found is None:
        return None
    version, tensors, values = found
    arch = str(values.get("general.architecture", ""))
    file_type = values.get("general.file_type")
    quant = FILE_TYPES.get(file_type, "") if isinstance(file_type, int) else ""
    if not quant:
        named = KNOWN_QUANT.search(f.path.rsplit("/", 1)[-1])
        quant = named.group(1).upper() if named else ""
    context = values.get(f"{arch}.context_length")
    items = []
    for key, value in list(values.items())[:200]:
        text = repr(value) if isinstance(value, GgufArray) else str(value)
        items.append((key[:120], text if len(text) <= 300 else text[:300] + "…"))
    return Gguf(
        architecture=arch, quantization=quant,
        context_length=context if isinstance(context, int) else None,
        tensors=tensors, version=version, items=items,
        complete=len(values) < 512 and capped.spent < capped.limit,
    )  # fmt: skip


# -- dataset rows --------------------------------------------------------------------------


@dataclass(frozen=True)
class Rows:
    """The first rows of a dataset file."""

    columns: list[str]
    rows: list[list[str]]
    total: int | None
    note: str


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= CELL_LIMIT else text[:CELL_LIMIT] + "…"


def _table(records: Iterator[dict[str, Any]], total: int | None, note: str) -> Rows | None:
    columns: list[str] = []
    taken: list[dict[str, Any]] = []
    for record in records:
        taken.append(record)
        for key in record:
            if key not in columns and len(columns) < COLUMN_LIMIT:
                columns.append(str(key))
        if len(taken) >= ROW_LIMIT:
            break
    if not taken:
        return None
    rows = [[_cell(r[c]) if c in r else "" for c in columns] for r in taken]
    return Rows(columns, rows, total, note)


def dataset_rows(f: RepoFile) -> Rows | None:
    """The first rows of a CSV/TSV, JSON, JSON Lines or Parquet file, reading at most a few
    hundred KiB of text or, for Parquet, the footer and the first row group; None for a file
    these readers cannot read."""
    name = f.path.lower()
    try:
        if name.endswith((".csv", ".tsv")):
            return _csv_rows(f, "\t" if name.endswith(".tsv") else ",")
        if name.endswith(".jsonl"):
            return _jsonl_rows(f)
        if name.endswith(".json"):
            return _json_rows(f)
        if name.endswith(".parquet"):
            return _parquet_rows(f)
    except (OSError, ValueError, csv.Error, UnicodeDecodeError):
        return None
    return None


def _head_lines(f: RepoFile) -> list[str]:
    data = b"".join(f.chunks(0, min(f.size, TEXT_ROWS_BYTES)))
    text = data.decode("utf-8", "replace").lstrip("\ufeff")
    lines = text.splitlines()
    if f.size > TEXT_ROWS_BYTES and lines:
        lines.pop()  # cut off mid-line
    return lines


def _csv_rows(f: RepoFile, delimiter: str) -> Rows | None:
    reader = csv.DictReader(_head_lines(f), delimiter=delimiter)
    return _table((dict(r) for r in reader), None, "")


def _jsonl_rows(f: RepoFile) -> Rows | None:
    def records() -> Iterator[dict[str, Any]]:
        for line in _head_lines(f):
            if line.strip():
                doc = json.loads(line)
                yield doc if isinstance(doc, dict) else {"value": doc}

    return _table(records(), None, "")


def _json_rows(f: RepoFile) -> Rows | None:
    if f.size > JSON_LIMIT:
        return None  # a JSON document is read whole or not at all
    doc = json.loads(b"".join(f.chunks()))
    if isinstance(doc, dict):  # {"data": [...]}: the first list of records in it
        lists = [v for v in doc.values() if isinstance(v, list)]
        doc = lists[0] if lists else [doc]
    if not isinstance(doc, list):
        return None
    records = (r if isinstance(r, dict) else {"value": r} for r in doc)
    return _table(records, len(doc), "")


def _parquet_rows(f: RepoFile) -> Rows | None:
    try:
        import pyarrow.parquet as pq  # type: ignore[import-untyped]
    except ImportError:
        return Rows([], [], None, "a Parquet preview needs pyarrow: pip install 'hf2oci[parquet]'")
    reader, capped = open_capped(f, block=256 << 10)
    pf = pq.ParquetFile(reader)
    meta = pf.metadata
    total = meta.num_rows
    if meta.num_row_groups == 0:
        return Rows([str(n) for n in pf.schema_arrow.names][:COLUMN_LIMIT], [], total, "")
    group = meta.row_group(0)
    compressed = sum(group.column(i).total_compressed_size for i in range(group.num_columns))
    if compressed > capped.limit - capped.spent:
        names = [str(n) for n in pf.schema_arrow.names][:COLUMN_LIMIT]
        return Rows(names, [], total, "its first row group is too large to preview")
    batch = next(pf.iter_batches(batch_size=ROW_LIMIT, row_groups=[0]), None)
    if batch is None:
        return None
    return _table(iter(batch.to_pylist()), total, "")
