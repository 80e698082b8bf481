"""Sizes for people: one formatting rule for the CLI, the pipeline and the records."""

from __future__ import annotations


def human_size(size: int) -> str:
    """``1288490189`` → ``"1.2 GiB"``; bytes below 1 KiB are exact."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            break
    return f"{value:.1f} {unit}"
