"""The one error tree of Formula Foundry.

Every error raised on purpose by this package derives from
:class:`FormulaFoundryError`, so callers can catch one class. Messages name
the place (file, line, key) and the rule that was broken.

::

    FormulaFoundryError
    ├── ConfigError                 config/mlflow.yaml missing, bad YAML, unknown key, wrong type
    ├── SubstrateError
    │   ├── UnsafeRunIdError        a run id that could escape the run root
    │   ├── ArtifactNotFoundError   a source file or stored blob is missing
    │   └── DigestMismatchError     stored content no longer matches its sha256
    ├── TrackingError
    │   ├── ValidationError         a call MLflow would reject (key, rule)
    │   ├── RunStateError           misuse of the run API (logging to an ended run, ...)
    │   └── JournalError
    │       ├── JournalLockedError      another process holds the journal
    │       ├── JournalWriteError       the OS refused an append (disk full, read-only)
    │       ├── CorruptRecordError      a line failed its checksum or framing
    │       └── UnsupportedVersionError written by a newer format version
    ├── IngestError
    │   ├── MlflowMissingError      the ingester needs ``formula-foundry[tracking]``
    │   ├── StoreUnavailableError   the tracking store cannot be reached right now
    │   ├── StoreRejectedError      the store refused a batch (names journal, records, reason)
    │   ├── BlobError               an ``artifact`` record's blob is missing or no longer matches its digest
    │   └── IngesterLockedError     another ingester already serves these roots
    └── AcceptanceError             acceptance registry or a target expression is invalid (file, line, column)
"""

from __future__ import annotations

__all__ = [
    "AcceptanceError",
    "ArtifactNotFoundError",
    "BlobError",
    "ConfigError",
    "CorruptRecordError",
    "DigestMismatchError",
    "FormulaFoundryError",
    "IngestError",
    "IngesterLockedError",
    "JournalError",
    "JournalLockedError",
    "JournalWriteError",
    "MlflowMissingError",
    "RunStateError",
    "StoreRejectedError",
    "StoreUnavailableError",
    "SubstrateError",
    "TrackingError",
    "UnsafeRunIdError",
    "UnsupportedVersionError",
    "ValidationError",
]


class FormulaFoundryError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(FormulaFoundryError):
    """The configuration file is missing, unreadable or does not match the schema."""

    def __init__(self, message: str, *, path: object = None, key: str | None = None) -> None:
        where = ""
        if path is not None:
            where = f"{path}"
            if key:
                where += f": key '{key}'"
            where += ": "
        elif key:
            where = f"key '{key}': "
        super().__init__(where + message)
        self.path = path
        self.key = key


class SubstrateError(FormulaFoundryError):
    """Errors of the substrate (run directories, artifact store, manifest)."""


class UnsafeRunIdError(SubstrateError, ValueError):
    """A run id that contains a path separator, '..' or other unsafe characters."""


class ArtifactNotFoundError(SubstrateError, FileNotFoundError):
    """A file to add, or a stored blob to read, does not exist."""


class DigestMismatchError(SubstrateError):
    """Stored content does not hash to the digest it is filed under."""


class TrackingError(FormulaFoundryError):
    """Errors of the producer side (tracker, journal)."""


class ValidationError(TrackingError, ValueError):
    """A logging call that MLflow would reject; names the key and the rule."""

    def __init__(self, message: str, *, key: str | None = None, rule: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.rule = rule


class RunStateError(TrackingError, RuntimeError):
    """The run API was used out of order (e.g. logging to a run that has ended)."""


class JournalError(TrackingError):
    """Errors of journal files."""


class JournalLockedError(JournalError):
    """Another process holds the OS lock on this journal file."""


class JournalWriteError(JournalError, OSError):
    """The operating system refused an append (disk full, read-only file system)."""


class CorruptRecordError(JournalError):
    """A journal line failed its framing or checksum; names file, line and offset."""

    def __init__(self, reason: str, *, path: object = None, line: int | None = None,
                 offset: int | None = None) -> None:
        super().__init__(f"{path}:{line} (byte offset {offset}): {reason}")
        self.reason = reason
        self.path = path
        self.line = line
        self.offset = offset


class UnsupportedVersionError(JournalError):
    """The journal was written by a newer format version than this reader knows."""


class IngestError(FormulaFoundryError):
    """Errors of the ingester."""


class MlflowMissingError(IngestError):
    """MLflow (the ``tracking`` extra) is not installed."""


class StoreUnavailableError(IngestError):
    """The tracking store cannot be reached; the journals keep everything meanwhile."""


class StoreRejectedError(IngestError):
    """The tracking store refused a batch; retrying the same batch will not help."""


class BlobError(IngestError):
    """The blob of an ``artifact`` record is missing, or its bytes no longer match the record's
    sha256 digest or size. The journal's error (never a store outage): nothing of that blob is
    uploaded and the journal waits at its checkpoint until the blob is restored."""

    def __init__(self, reason: str, *, artifact_path: str, digest: str, line: int | None = None) -> None:
        super().__init__(f"artifact {artifact_path!r} (sha256 {digest}): {reason}")
        self.reason = reason
        self.artifact_path = artifact_path
        self.digest = digest
        self.line = line


class IngesterLockedError(IngestError):
    """Another ingester already serves this store and these journal roots."""


class AcceptanceError(FormulaFoundryError):
    """The acceptance registry or a target expression is invalid; names file, line and column."""

    def __init__(self, message: str, *, path: object = None, line: int | None = None,
                 column: str | None = None) -> None:
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f":{line}"
            if column:
                where += f": column '{column}'"
            where += ": "
        elif column:
            where = f"column '{column}': "
        super().__init__(where + message)
        self.reason = message
        self.path = path
        self.line = line
        self.column = column
