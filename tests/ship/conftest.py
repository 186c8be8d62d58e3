"""Fixtures of the shipper's tests: a fresh prefix of moto's S3 server (``moto_s3`` and ``s3_client_env``
come from ``tests/services.py``, shared by every folder of the session)."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def s3_uri(s3_client_env) -> str:
    """A fresh prefix in the moto bucket, as a destination URI."""
    return f"s3://{s3_client_env.bucket}/ship-{uuid.uuid4().hex[:8]}"
