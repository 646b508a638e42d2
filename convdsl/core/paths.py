"""Where convdsl keeps files between runs: the user's cache directory."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$CONVDSL_CACHE_DIR``, else ``$XDG_CACHE_HOME/convdsl``, else ``~/.cache/convdsl``, whether or
    not it exists or can be written."""
    root = os.environ.get("CONVDSL_CACHE_DIR")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "convdsl"


def cache_dir() -> Path | None:
    """:func:`cache_root`, made if need be; None when it cannot be made or written (a read-only
    home, say): callers then work without a cache."""
    path = cache_root()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return path if os.access(path, os.W_OK) else None
