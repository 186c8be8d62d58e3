"""One rule for store errors: the store unwell is 'unavailable' (exit 3); a refused request is 'rejected'."""

from __future__ import annotations

import errno
import sqlite3

import pytest
import requests
import sqlalchemy.exc
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, INVALID_STATE, TEMPORARILY_UNAVAILABLE

from formula_foundry.errors import StoreRejectedError, StoreUnavailableError
from formula_foundry.tracking.ingest.store_errors import classify, store_errors

SECRET = "hunter22"


@pytest.mark.parametrize("exc", [
    sqlite3.OperationalError("database is locked"),
    sqlalchemy.exc.OperationalError("INSERT ...", {}, sqlite3.OperationalError("database or disk is full")),
    OSError(errno.ENOSPC, "No space left on device"),
    OSError(errno.EROFS, "Read-only file system"),
    OSError(errno.EACCES, "Permission denied"),
    requests.exceptions.ConnectionError("Max retries exceeded with url: /api/2.0/mlflow/runs/log-batch"),
    ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
    MlflowException("try later", error_code=TEMPORARILY_UNAVAILABLE),
])
def test_the_store_being_unwell_is_unavailable(exc):
    assert isinstance(classify(exc), StoreUnavailableError)


@pytest.mark.parametrize("exc", [
    MlflowException("Invalid value for key", error_code=INVALID_PARAMETER_VALUE),
    MlflowException("run must be in the 'active' state", error_code=INVALID_STATE),
    OSError(errno.EINVAL, "Invalid argument"),
    OSError(errno.ENAMETOOLONG, "File name too long"),
    sqlalchemy.exc.IntegrityError("INSERT ...", {}, Exception("UNIQUE constraint failed")),
    ValueError("bad value"),
])
def test_a_refused_request_is_rejected(exc):
    assert isinstance(classify(exc), StoreRejectedError)


def test_store_errors_names_what_failed_and_hides_the_uri_secret():
    uri = f"postgresql://ff:{SECRET}@db:5432/m?sslpassword={SECRET}"
    with pytest.raises(StoreUnavailableError) as info, store_errors("log_batch", uri):
        raise sqlalchemy.exc.OperationalError(f"connect {uri}", {}, Exception(f"refused for ff:{SECRET}"))
    text = str(info.value)
    assert text.startswith("log_batch: ") and SECRET not in text
