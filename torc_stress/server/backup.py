"""A consistent copy of a live server database (SQLite's online backup API)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def backup_database(src: Path, dst: Path) -> None:
    """Copies ``src`` to ``dst`` consistently, even while the server is writing to it.

    Raises:
        sqlite3.Error: the source cannot be read or the destination written.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    source = sqlite3.connect(f"file:{Path(src)}?mode=ro", uri=True)
    try:
        target = sqlite3.connect(str(dst))
        try:
            source.backup(target)
        finally:
            target.close()
    finally:
        source.close()
