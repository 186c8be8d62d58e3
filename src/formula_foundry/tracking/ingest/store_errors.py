"""One place that turns whatever a store raises into the ingester's two store errors.

Every call into MLflow, SQLAlchemy or HTTP goes through :func:`store_errors`
(in the manner of httpx's ``map_exceptions``)::

    with store_errors("log_batch", uri):
        client.log_batch(...)

and leaves it as one of two errors, its message scrubbed of credentials:

* :class:`StoreUnavailableError` -- the store cannot take anything right now
  (down, unreachable, locked, out of disk): nothing is lost, the pass stops
  (exit 3) and ``--watch`` retries with backoff.
* :class:`StoreRejectedError` -- the store refused *this* request (a bad value,
  a deleted run): the journal that sent it has an error (exit 1); every other
  journal goes on.

The rule: only what says the store itself is unwell is "unavailable"; a
refusal caused by the records sent is "rejected", never an outage.
"""

from __future__ import annotations

import errno
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import exc as sa_exc

from formula_foundry.errors import StoreRejectedError, StoreUnavailableError
from formula_foundry.tracking.ingest.uri import scrub

__all__ = ["classify", "store_errors", "translate"]

_TRANSIENT_CODES = {"TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "REQUEST_LIMIT_EXCEEDED", "ENDPOINT_NOT_FOUND"}
_TRANSIENT_TEXT = re.compile(
    r"database is locked|could not connect|connection refused|max retries exceeded|timed out|"
    r"failed to establish|server closed the connection|name or service not known|connection reset|"
    r"bad gateway|service unavailable|gateway timeout|API request to .* failed|"
    r"disk is full|no space left|disk quota|read-only file system|terminating connection|"
    r"connection (?:is )?closed|too many connections|the database system is (?:starting|shutting)",
    re.IGNORECASE)
# OS errors of the store's own medium or network; any other OSError (a bad name, a path that is a
# directory) is about the request.
_OUTAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EACCES, errno.EPERM,
                  errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT,
                  errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EPIPE, errno.ENOTCONN}


def classify(exc: BaseException) -> StoreUnavailableError | StoreRejectedError:
    """The store error ``exc`` amounts to (see the module docstring)."""
    if isinstance(exc, (StoreUnavailableError, StoreRejectedError)):
        return exc
    text = f"{type(exc).__name__}: {exc}"
    code = getattr(exc, "error_code", "") or ""  # MlflowException and its REST form carry one
    if code in _TRANSIENT_CODES or _TRANSIENT_TEXT.search(text):
        return StoreUnavailableError(text[:500])
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)) and not isinstance(exc.orig, sqlite3.Error):
        return StoreUnavailableError(text[:500])  # a database server's connection or state, not the request
    if isinstance(exc, OSError) and not code:
        # requests' ConnectionError and friends are OSErrors without an errno.
        if exc.errno is None or exc.errno in _OUTAGE_ERRNOS:
            return StoreUnavailableError(text[:500])
    return StoreRejectedError(text[:1000])


def translate(exc: Exception, what: str, uri: str) -> StoreUnavailableError | StoreRejectedError:
    """The store error to raise for ``exc`` (from ``what`` on the store ``uri``), secrets scrubbed."""
    if isinstance(exc, (StoreUnavailableError, StoreRejectedError)):
        return type(exc)(scrub(str(exc), uri))
    err = classify(exc)
    return type(err)(scrub(f"{what}: {err}", uri))


@contextmanager
def store_errors(what: str, uri: str) -> Iterator[None]:
    """Translate any exception of the block into a store error that says ``what`` failed, secrets scrubbed."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - every failure is classified, none is swallowed
        raise translate(exc, what, uri) from None
