"""Where convdsl keeps files between runs: the user's cache directory."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path | None:
    """``$CONVDSL_CACHE_DIR``, else ``$XDG_CACHE_HOME/convdsl``, else ``~/.cache/convdsl``.

    Returns None when no such directory can be created (a read-only home, say):
    callers then work without a cache.
    """
    root = os.environ.get("CONVDSL_CACHE_DIR")
    if root:
        path = Path(root)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = Path(base) / "convdsl"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return path if os.access(path, os.W_OK) else None
