"""tools/mlflow/docker-compose.yaml and setup.env.example, checked without a Docker engine.

No machine of ours runs Docker, so these tests check what can be checked statically:
the compose file parses and has the services seed 003 asks for, every variable it
and start_server.sh read is documented in setup.env.example (and nothing there is
unused), and no credential is written down anywhere but as a placeholder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

TOOLS = Path(__file__).resolve().parents[2] / "tools" / "mlflow"
COMPOSE = TOOLS / "docker-compose.yaml"
EXAMPLE = TOOLS / "setup.env.example"
SCRIPT = TOOLS / "start_server.sh"

# ${VAR}, ${VAR:-default}, ${VAR:?message}; `$${...}`/`$$VAR` are escapes for the container's shell.
_COMPOSE_REF = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")
_CONTAINER_REF = re.compile(r"\$\$\{?([A-Za-z_][A-Za-z0-9_]*)")
_ASSIGNMENT = re.compile(r"^([A-Z_][A-Z0-9_]*)=(.*)$")
# Upper-case names the script reads; its own variables are lower-case by convention.
_SCRIPT_REF = re.compile(r"\$\{!?([A-Z_][A-Z0-9_]*)")
# Read by the script but not settings of the server: they choose how the script itself runs.
_SCRIPT_CONTROLS = {"FF_SETUP_ENV", "FF_DRY_RUN", "BASH_SOURCE", "BASH_REMATCH"}
_SPEC_VARIABLES = {
    "HOST", "PORT", "MLFLOW_BACKEND_STORE_URI", "MLFLOW_ARTIFACTS_DESTINATION", "MLFLOW_S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB",
    "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "MLFLOW_BUCKET", "MLFLOW_TRACKING_URI", "MLFLOW_WORKERS",
}
_CREDENTIAL = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|ROOT_USER")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _strings(node: Any) -> list[str]:
    """Every string (keys and values) in a parsed YAML tree; comments are already gone."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(node, list):
        return [s for item in node for s in _strings(item)]
    return []


def example_settings() -> dict[str, str]:
    settings = {}
    for line in EXAMPLE.read_text().splitlines():
        match = _ASSIGNMENT.match(line)
        if match:
            settings[match.group(1)] = match.group(2)
    return settings


def compose_variables(compose: dict[str, Any]) -> set[str]:
    return {m for s in _strings(compose) for m in _COMPOSE_REF.findall(s)}


def script_variables() -> set[str]:
    code = "\n".join(line for line in SCRIPT.read_text().splitlines() if not line.lstrip().startswith("#"))
    return set(_SCRIPT_REF.findall(code)) - _SCRIPT_CONTROLS


def test_compose_has_the_services(compose: dict[str, Any]) -> None:
    """postgres (16, health-checked), minio, a one-shot mc service, mlflow; named volumes."""
    services = compose["services"]
    assert {"postgres", "minio", "mlflow"} <= set(services)
    assert services["postgres"]["image"] == "postgres:16"
    assert "healthcheck" in services["postgres"]
    assert services["minio"]["image"].startswith("minio/minio")
    init = [s for s in services.values() if str(s.get("image", "")).startswith("minio/mc")]
    assert len(init) == 1 and init[0].get("restart") == "no"
    assert "mb" in " ".join(_strings(init[0].get("command")))
    assert set(compose["volumes"]) >= {"pgdata", "minio"}


def test_compose_mlflow_service(compose: dict[str, Any]) -> None:
    """mlflow 3.17 with psycopg and boto3, PostgreSQL backend, proxied S3 artifacts, 0.0.0.0:$PORT."""
    mlflow = compose["services"]["mlflow"]
    command = " ".join(_strings(mlflow["command"]))
    for needle in ("mlflow>=3.17,<3.18", "psycopg[binary]", "boto3", "exec mlflow server",
                   "--serve-artifacts",
                   '--artifacts-destination "s3://$$MLFLOW_BUCKET/"', "--host 0.0.0.0", '--port "$$PORT"'):
        assert needle in command, needle
    env = mlflow["environment"]
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://${POSTGRES_USER")
    assert "@postgres:5432/" in env["MLFLOW_BACKEND_STORE_URI"]
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert mlflow["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert mlflow["ports"] == ["${PORT:-5000}:${PORT:-5000}"]


def test_compose_central_ingester(compose: dict[str, Any]) -> None:
    """The central ingester: this checkout installed with the tracking, postgres and s3 extras, following the
    shipped journals in MinIO into the server's own PostgreSQL database, with its state in a volume."""
    ingester = compose["services"]["ingester"]
    command = " ".join(_strings(ingester["command"]))
    for needle in ("[tracking,postgres,s3]", "exec ff-ingest --watch", '--root "s3://$$FF_SHIP_BUCKET/ship"'):
        assert needle in command, needle
    assert "--tracking-uri" not in command  # the database password stays out of `ps`
    env = ingester["environment"]
    server_env = compose["services"]["mlflow"]["environment"]
    assert env["MLFLOW_TRACKING_URI"] == server_env["MLFLOW_BACKEND_STORE_URI"]  # the server's own store
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert env["FF_ARTIFACT_ROOT"].startswith("s3://${MLFLOW_BUCKET")
    # mlflow-artifacts:/ locations (experiments the server created) through the server, at the port it listens on
    assert env["FF_ARTIFACTS_SERVER_URI"] == f"http://mlflow:{server_env['PORT']}"
    assert "../..:/src:ro" in ingester["volumes"]
    assert any(v.startswith("ingest-state:") and v.split(":")[1] == ingester["working_dir"]
               for v in ingester["volumes"])
    assert "ingest-state" in compose["volumes"]
    assert ingester["depends_on"]["mlflow"]["condition"] == "service_healthy"
    init = " ".join(_strings(compose["services"]["minio-init"]["command"]))
    assert 'mc mb --ignore-existing "ff/$$FF_SHIP_BUCKET"' in init


def test_compose_server_answers_the_ingester_by_its_service_name(compose: dict[str, Any]) -> None:
    """mlflow's Host-header check (DNS rebinding) lets the ingester in as ``mlflow:<port>`` and keeps
    mlflow's own defaults (loopback and private addresses), judged by mlflow's own functions."""
    security = pytest.importorskip("mlflow.server.security_utils")
    from urllib.parse import urlsplit

    server_env = compose["services"]["mlflow"]["environment"]
    allowed = [h.strip() for h in server_env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")]
    assert set(security.get_default_allowed_hosts()) <= set(allowed)
    url = compose["services"]["ingester"]["environment"]["FF_ARTIFACTS_SERVER_URI"]
    default = re.fullmatch(r"\$\{PORT:-(\d+)\}", server_env["PORT"]).group(1)
    for port in (default, "8080"):  # the default port, and another one set in setup.env
        host = urlsplit(url.replace(server_env["PORT"], port)).netloc
        assert security.is_allowed_host_header(allowed, host), host
    assert not security.is_allowed_host_header(allowed, "mlflow.attacker.example:5000")


def test_container_shell_references_are_defined(compose: dict[str, Any]) -> None:
    """Each $$VAR that a container's shell expands is in that service's environment."""
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        for text in _strings([service.get("command"), service.get("entrypoint"), service.get("healthcheck")]):
            for var in _CONTAINER_REF.findall(text):
                assert var in env, f"service {name}: $${var} is not in its environment"


def test_every_compose_variable_is_documented(compose: dict[str, Any]) -> None:
    """Every ${VAR} compose substitutes appears in setup.env.example."""
    missing = compose_variables(compose) - set(example_settings())
    assert not missing, f"not in setup.env.example: {sorted(missing)}"


def test_every_script_variable_is_documented() -> None:
    """Every upper-case variable start_server.sh reads appears in setup.env.example."""
    variables = script_variables()
    assert {"HOST", "PORT", "MLFLOW_BACKEND_STORE_URI", "MLFLOW_ARTIFACTS_DESTINATION"} <= variables
    missing = variables - set(example_settings())
    assert not missing, f"not in setup.env.example: {sorted(missing)}"


def test_example_documents_the_spec_and_nothing_unused(compose: dict[str, Any]) -> None:
    """The example has every variable of the spec, and each of its variables is read by someone."""
    settings = set(example_settings())
    assert settings >= _SPEC_VARIABLES
    used = compose_variables(compose) | script_variables() | {"MLFLOW_TRACKING_URI"}  # clients read that
    assert settings <= used, f"documented but unused: {sorted(settings - used)}"
    # The script and compose agree on the names they share.
    assert {"PORT", "MLFLOW_WORKERS", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= (
        compose_variables(compose) & script_variables())


def test_every_example_variable_has_a_comment() -> None:
    """Each assignment in setup.env.example sits under a comment line explaining it."""
    lines = EXAMPLE.read_text().splitlines()
    for index, line in enumerate(lines):
        if _ASSIGNMENT.match(line):
            above = index - 1
            while above >= 0 and _ASSIGNMENT.match(lines[above]):
                above -= 1
            assert above >= 0 and lines[above].startswith("#"), f"line {index + 1}: {line} has no comment"


def test_example_credentials_are_placeholders() -> None:
    """Credentials in the example (values and URIs in comments) are `change-me` placeholders."""
    text = EXAMPLE.read_text()
    for name, value in example_settings().items():
        if _CREDENTIAL.search(name):
            assert value.startswith("change-me"), f"{name}={value}"
    for password in re.findall(r"://[^:/@\s]+:([^@\s]+)@", text):
        assert password.startswith("change-me"), password


def test_compose_has_no_literal_credentials(compose: dict[str, Any]) -> None:
    """Every credential-like environment value is a ${VAR} substitution; no placeholder text leaks in."""
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if _CREDENTIAL.search(key):
                assert re.fullmatch(r"\$\{[A-Z_]+(:[?-][^}]*)?\}", str(value)), f"{name}.{key}={value}"
    uri = compose["services"]["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert re.match(r"postgresql://\$\{POSTGRES_USER[^}]*\}:\$\{POSTGRES_PASSWORD[^}]*\}@", uri)
    assert not any("change-me" in s for s in _strings(compose))
    raw = COMPOSE.read_text()
    for value in example_settings().values():
        if value.startswith("change-me"):
            assert value not in raw


def test_compose_header_explains_usage() -> None:
    """The file opens with a comment saying how to start it with setup.env."""
    head = COMPOSE.read_text().split("\nname:", 1)[0]
    assert all(line.startswith("#") or not line for line in head.splitlines())
    assert "docker compose --env-file" in head
    assert "setup.env" in head
