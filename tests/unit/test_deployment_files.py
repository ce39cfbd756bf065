"""No Docker engine runs here, so the compose file and NGINX config are checked for shape:
the services, images, replicas, ports, health checks and start-up order a user relies on."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_compose_runs_official_images_of_the_servers(compose: dict[str, Any]) -> None:
    images = {name: svc.get("image", "") for name, svc in compose["services"].items()}
    assert images["kafka"].startswith("apache/kafka:4.")
    assert images["mongo"].startswith("mongo:")
    assert images["redis"].startswith("redis:")
    assert images["nginx"].startswith("nginx:")


def test_compose_kafka_matches_the_native_broker_and_keeps_its_log(
        compose: dict[str, Any]) -> None:
    pom = (ROOT / "infra" / "kafka" / "pom.xml").read_text()
    native = pom.split("<kafka.version>")[1].split("<")[0]
    kafka = compose["services"]["kafka"]
    assert kafka["image"] == f"apache/kafka:{native}"
    log_dir = kafka["environment"]["KAFKA_LOG_DIRS"]
    assert any(volume.endswith(f":{log_dir}") for volume in kafka["volumes"])


def test_compose_runs_every_service_with_replicas(compose: dict[str, Any]) -> None:
    services = compose["services"]
    expected = [("gateway", "ingest_gateway", 3), ("aggregator", "aggregator", 2),
                ("query", "query_api", 2)]
    for name, module, replicas in expected:
        assert services[name]["command"] == ["python", "-m", module]
        assert services[name]["deploy"]["replicas"] == replicas
        assert services[name]["build"]["dockerfile"] == "infra/Dockerfile"
        assert (ROOT / services[name]["build"]["dockerfile"]).exists()


def test_every_long_running_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        if name not in ("kafka-init", "init"):
            assert "test" in svc.get("healthcheck", {}), name


def test_services_wait_for_what_they_need(compose: dict[str, Any]) -> None:
    deps = {name: svc.get("depends_on", {}) for name, svc in compose["services"].items()}
    assert deps["kafka-init"]["kafka"]["condition"] == "service_healthy"
    assert deps["gateway"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert {"mongo", "redis", "kafka-init"} <= set(deps["aggregator"])
    assert {"gateway", "query"} <= set(deps["nginx"])


def test_nginx_is_published_on_loopback_8080_with_the_shared_routes(
        compose: dict[str, Any]) -> None:
    nginx = compose["services"]["nginx"]
    assert nginx["ports"] == ["127.0.0.1:${HTTP_PORT:-8080}:8080"]
    assert any("routes.conf" in volume for volume in nginx["volumes"])


def interpolate(text: str, environ: dict[str, str]) -> str:
    """Compose's variable interpolation, as far as this file uses it: ``${VAR}``,
    ``${VAR:-default}`` and ``${VAR:?error}`` (compose refuses to start with the error when
    VAR is unset or empty)."""
    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        value = environ.get(name, "")
        if op == ":?" and not value:
            raise ValueError(f"{name}: {arg}")
        return value or (arg if op == ":-" else "")
    return re.sub(r"\$\{(\w+)(?:(:[-?])((?:[^{}]|\$\([^)]*\))*))?\}", one, text)


def test_compose_refuses_to_start_without_an_admin_token() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    key = {"USER_ID_HASH_KEY": "k" * 32}  # the other secret compose requires
    with pytest.raises(ValueError, match="STATS_TOKEN: set STATS_TOKEN"):
        interpolate(text, key)
    with pytest.raises(ValueError, match="STATS_TOKEN"):
        interpolate(text, {**key, "STATS_TOKEN": ""})
    with pytest.raises(ValueError, match="USER_ID_HASH_KEY"):
        interpolate(text, {"STATS_TOKEN": "t0ken"})
    services = yaml.safe_load(interpolate(text, {**key, "STATS_TOKEN": "t0ken"}))["services"]
    assert services["init"]["environment"]["STATS_TOKEN"] == "t0ken"
    assert services["init"]["command"] == ["python", "-m", "admin", "init",
                                           "--admin-token-env", "STATS_TOKEN"]


def test_no_token_has_a_default_anywhere_in_compose() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert not re.search(r"TOKEN\w*:-", text), "a token variable with a default"
    assert "STATS_TOKENS" not in text and "STATS_AUTH_DISABLED" not in text


def test_the_services_start_only_after_init_registered_the_site_and_token(
        compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["init"]["depends_on"]["mongo"]["condition"] == "service_healthy"
    for name in ("gateway", "query"):
        assert services[name]["depends_on"]["init"]["condition"] == \
            "service_completed_successfully", name
    assert "COPY admin ./admin" in (ROOT / "infra" / "Dockerfile").read_text()


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_the_docker_nginx_config_is_valid_nginx(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    routes = (ROOT / "infra" / "nginx" / "docker.conf").read_text().replace(
        "/etc/nginx/pageviews/routes.conf", str(ROOT / "infra" / "nginx" / "routes.conf"))
    # Docker's DNS names don't resolve here; loopback stands in for them.
    routes = routes.replace("gateway:8101", "127.0.0.1:8101").replace("query:8201",
                                                                     "127.0.0.1:8201")
    (tmp_path / "site.conf").write_text(routes)
    conf.write_text(f"pid {tmp_path}/nginx.pid; error_log stderr; events {{}}\n"
                    f"http {{ client_body_temp_path {tmp_path}; proxy_temp_path {tmp_path};\n"
                    f"include {tmp_path}/site.conf; }}\n")
    result = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(conf)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_compose_bounds_redis_memory_without_eviction(compose: dict[str, Any]) -> None:
    command = compose["services"]["redis"]["command"]
    assert command[command.index("--maxmemory") + 1] == "${REDIS_MAXMEMORY:-1gb}"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert command[command.index("--hash-max-listpack-entries") + 1] == "512"


@pytest.mark.parametrize("name", ["nginx.conf.in", "docker.conf"])
def test_nginx_writes_no_client_address_to_any_log(name: str) -> None:
    """Issue 17: the access log has no ``$remote_addr``; limit refusals log below the error
    log's level, and request-time error lines (which end in ``client: ADDR``) only at crit."""
    text = (ROOT / "infra" / "nginx" / name).read_text()
    assert "$remote_addr" not in text
    assert "limit_req_log_level info;" in text and "limit_conn_log_level info;" in text
    server = text[text.index("server {"):]
    assert re.search(r"error_log \S+ crit;", server)


@pytest.mark.parametrize(("path", "limit"), [("/api/event", "64k"), ("/api/send", "64k"),
                                             ("/api/batch", "1m")])
def test_the_tracker_endpoints_go_to_the_gateways_with_their_body_limits(path: str,
                                                                         limit: str) -> None:
    routes = (ROOT / "infra" / "nginx" / "routes.conf").read_text()
    block = routes[routes.index(f"location = {path} {{"):]
    block = block[:block.index("}")]
    assert f"client_max_body_size {limit};" in block and "proxy_pass http://ingest_gateways;" \
        in block and "limit_req zone=ingest" in block
    assert "proxy_set_header" not in block  # it would stop X-Real-IP being inherited
