"""Wall time since the process started: what start-up measurements count from."""

from __future__ import annotations

import os
import time
from pathlib import Path

_IMPORTED_AT = time.time()


def seconds_since_process_start() -> float:
    """Wall time since this process started (Linux: from /proc; elsewhere: since this module
    was imported, which misses the interpreter's own start-up)."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return time.time() - _IMPORTED_AT
