"""Tracking-store URIs: what kind of store, which store, and how to show one without its secrets.

Dependency-free (standard library only), so every layer can use it, including
readers that must work without MLflow (``ff-ingest status``).

* :func:`redact` is the one way a URI is shown or stored (summaries, logs,
  ``status``, ``doctor``, state files): the password of the user-info, every
  query parameter whose name says secret (``password``, ``sslpassword``,
  ``token``, ``secret``, ``*key*``, ``sig``...) become ``***``.
* :func:`scrub` removes the same secrets (and MLflow's credential variables)
  from free text, such as an exception message that quotes the URI.
* :func:`store_identity` is the one canonical name of a store, whatever the
  spelling of its URI: the resolved file for SQLite (``./`` segments, symlinked
  folders and query strings do not make another store), host, port and
  database for SQL servers, the server for HTTP. :func:`store_key` derives the
  state folder's name from it; the single-ingester lock uses it.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from formula_foundry.tracking.config import sqlite_path_of

__all__ = ["is_http", "is_sql", "redact", "scheme", "scrub", "store_identity", "store_key"]

MASK = "***"
# Query parameter names that carry secrets (libpq's password/sslpassword, tokens, keys, signatures).
_SECRET_NAME = re.compile(r"pass|pwd|secret|token|key|sig|credential|auth", re.IGNORECASE)
_CREDENTIAL_VARS = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "AWS_SECRET_ACCESS_KEY",
                    "AWS_SESSION_TOKEN", "PGPASSWORD")
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433, "http": 80, "https": 443}


def scheme(uri: str) -> str:
    """The store kind of ``uri``: ``sqlite``, ``postgresql``, ``http``, ... (the driver suffix dropped)."""
    return uri.split(":", 1)[0].split("+", 1)[0].lower() if ":" in uri else ""


def is_http(uri: str) -> bool:
    return scheme(uri) in ("http", "https")


def is_sql(uri: str) -> bool:
    return scheme(uri) in ("sqlite", "postgresql", "mysql", "mssql")


def _split(uri: str):
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
        return parts
    except ValueError:
        return None


def _secrets(uri: str) -> list[str]:
    parts = _split(uri)
    found: list[str] = []
    if parts is None:
        return found
    if parts.password:
        found += [parts.password, unquote(parts.password)]
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if value and _SECRET_NAME.search(name):
            found.append(value)
    return found


def redact(uri: str) -> str:
    """``uri`` with the user-info password and secret query parameters replaced by ``***``."""
    parts = _split(uri)
    if parts is None:  # not parseable: keep the scheme only
        return f"{scheme(uri) or 'uri'}:{MASK}"
    secret_query = any(_SECRET_NAME.search(name) for name, _ in parse_qsl(parts.query, keep_blank_values=True))
    if parts.password is None and not secret_query:
        return uri  # nothing to hide (and urlsplit would drop the empty host of sqlite:////abs)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{hostport}"
    query = parts.query
    if secret_query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(n, MASK if _SECRET_NAME.search(n) else v) for n, v in pairs], safe="*/")
    redacted = parts._replace(netloc=netloc, query=query).geturl()
    if uri.startswith(f"{parts.scheme}:///") and not redacted.startswith(f"{parts.scheme}:///"):
        redacted = redacted.replace(f"{parts.scheme}:", f"{parts.scheme}://", 1)  # keep an empty host
    return redacted


def scrub(text: str, uri: str | None = None) -> str:
    """``text`` with the secrets of ``uri`` and of MLflow's/AWS's credential variables replaced by ``***``."""
    secrets = _secrets(uri) if uri else []
    secrets += [v for name in _CREDENTIAL_VARS if (v := os.environ.get(name)) and len(v) >= 4]
    for secret in sorted(set(secrets), key=len, reverse=True):
        text = text.replace(secret, MASK)
    if uri:
        text = text.replace(uri, redact(uri))
    return text


def store_identity(uri: str) -> str:
    """The canonical name of the store behind ``uri`` (no credentials, one spelling per store).

    SQLite: ``sqlite:`` + the resolved database file. SQL servers: ``scheme://host:port/database``.
    HTTP(S): ``scheme://host:port/path``. Anything else: the redacted URI.
    """
    kind = scheme(uri)
    if kind == "sqlite":
        db = sqlite_path_of(uri)
        return f"sqlite:{os.path.realpath(db)}" if db is not None else redact(uri)
    parts = _split(uri)
    if parts is None or not parts.hostname:
        return redact(uri)
    port = parts.port or _DEFAULT_PORTS.get(kind, 0)
    path = parts.path.rstrip("/") if kind in ("http", "https") else parts.path.strip("/").split("/")[0]
    return f"{kind}://{parts.hostname.lower()}:{port}/{path}".rstrip("/")


def store_key(uri: str) -> str:
    """A readable, filesystem-safe folder name for the store behind ``uri`` (no credentials)."""
    identity = store_identity(uri)
    parts = _split(uri)
    label = (parts.hostname if parts else None) or Path(identity.split(":", 1)[-1]).name or scheme(uri)
    label = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{scheme(uri) or 'store'}-{label}")[:40]
    return f"{label}-{hashlib.sha256(identity.encode()).hexdigest()[:10]}"
