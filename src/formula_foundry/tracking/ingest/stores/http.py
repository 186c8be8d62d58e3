"""MLflow's HTTP client, as the ingester uses it: no retries of its own, short timeouts.

MLflow's REST client retries for minutes by default; the ingester has its own
backoff (``--watch``) and reruns (batch), and ``doctor`` wants an answer now:
one setting for all of them. MLflow is imported inside :func:`http_get` only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["HTTP_MAX_RETRIES", "http_get", "short_http_requests"]

HTTP_MAX_RETRIES = 0


@contextmanager
def short_http_requests(timeout: float) -> Iterator[None]:
    """MLflow's HTTP requests without retries and with ``timeout`` (unless the user set them), then restored."""
    wanted = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(HTTP_MAX_RETRIES),
              "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, int(timeout))),
              "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    saved = {name: os.environ.get(name) for name in wanted}
    for name, value in wanted.items():
        if saved[name] is None:
            os.environ[name] = value
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def http_get(tracking_uri: str, path: str, *, timeout: float):
    """One ``GET`` of an MLflow server endpoint (``/health``, ``/version``) without retries."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    return http_request(get_default_host_creds(tracking_uri), path, "GET", max_retries=HTTP_MAX_RETRIES,
                        backoff_factor=0, timeout=timeout, raise_on_status=False)


