"""Tests of ``ff-ingest --watch`` (the daemon) and ``ff-ingest status``."""
