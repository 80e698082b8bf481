"""HTTP Range headers (RFC 9110 §14), for one range: what clients of the hub send."""

from __future__ import annotations

import re
from dataclasses import dataclass

_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")


class Unsatisfiable(Exception):
    """The range asks for nothing inside the file: 416."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` inclusive for a ``Range`` header, None to send the whole file (no header,
    or one we do not honour: several ranges, other units, malformed — as the RFC allows)."""
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # a suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - n), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None  # invalid: ignored, as the RFC says
    if start >= size:
        raise Unsatisfiable
    return start, min(end, size - 1)


@dataclass(frozen=True)
class Ranged:
    """What a GET of ``size`` bytes with a ``Range`` header sends: ``length`` bytes from
    ``start``, as a 200 (the whole) or a 206 (a range), with the headers that say so."""

    start: int
    length: int
    size: int
    partial: bool

    @property
    def status(self) -> int:
        return 206 if self.partial else 200

    def headers(self) -> dict[str, str]:
        """``Content-Length``, and ``Content-Range`` for a 206."""
        out = {"Content-Length": str(self.length)}
        if self.partial:
            out["Content-Range"] = f"bytes {self.start}-{self.start + self.length - 1}/{self.size}"
        return out


def ranged(header: str | None, size: int) -> Ranged:
    """The answer to ``header`` over ``size`` bytes (``parse_range``'s rules); raises
    ``Unsatisfiable`` (a 416: send ``unsatisfiable(size)``)."""
    span = parse_range(header, size)
    start, end = span if span is not None else (0, size - 1)
    return Ranged(start, max(0, end - start + 1), size, span is not None)


def unsatisfiable(size: int) -> dict[str, str]:
    """A 416's header: the size there is."""
    return {"Content-Range": f"bytes */{size}"}
