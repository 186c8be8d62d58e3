"""Tests of the operations tools under tools/ (MLflow server script, compose file)."""
