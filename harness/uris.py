"""Store URIs (MLflow tracking stores, Optuna storages) as they may be shown: passwords hidden.

One helper for both stores, used by every message, tag and param that names a store.
"""

from __future__ import annotations

import urllib.parse

# Query parameters that carry a password (libpq and SQLAlchemy drivers accept `?password=`).
_SECRET_QUERY_KEYS = {"password", "pass", "pwd"}


def _secrets(uri: str) -> list[str]:
    """The passwords in `uri`: the one after `user:` and any `password=` query value."""
    parts = urllib.parse.urlsplit(uri)
    # As written and percent-decoded: a driver's message may quote either.
    found = [parts.password, urllib.parse.unquote(parts.password)] if parts.password else []
    found += [value for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
              if key.lower() in _SECRET_QUERY_KEYS and value]
    return found


def redact(uri: str) -> str:
    """`uri` with any password replaced by *** (for messages, tags and params)."""
    parts = urllib.parse.urlsplit(uri)
    if not _secrets(uri):
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1) if parts.password else parts.netloc
    query = "&".join(
        f"{item.split('=', 1)[0]}=***" if "=" in item and item.split("=", 1)[0].lower() in _SECRET_QUERY_KEYS else item
        for item in parts.query.split("&")
    ) if parts.query else parts.query
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def redact_text(text: str, uri: str) -> str:
    """`text` (e.g. a driver's error message) with `uri`'s password, wherever it appears, hidden."""
    for secret in sorted(_secrets(uri), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
