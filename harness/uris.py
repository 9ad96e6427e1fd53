"""Store URIs (MLflow tracking stores, Optuna storages) as they may be shown: passwords hidden.

One helper for both stores, used by every message, tag and param that names a store.
"""

from __future__ import annotations

import urllib.parse


def redact(uri: str) -> str:
    """`uri` with any password replaced by *** (for messages, tags and params)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def redact_text(text: str, uri: str) -> str:
    """`text` (e.g. a driver's error message) with `uri`'s password, wherever it appears, hidden."""
    password = urllib.parse.urlsplit(uri).password
    return text.replace(password, "***") if password else text
