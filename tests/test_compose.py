"""The production stack's wiring: docker-compose.yml and the Dockerfile, checked without Docker.

Each check ties two places together: a URL's host to a service, its credentials to the
database's, a healthcheck's port to the port the command listens on, an environment variable's
name to the Prefect setting that reads it. And the door is locked: every secret must be given
(compose refuses to start without it, no default password), and published ports bind loopback
unless LLMFLOW_BIND says otherwise.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = {"postgres", "prefect-server", "deploy", "worker", "serve", "dask-scheduler", "dask-worker"}
SECRETS = {
    "POSTGRES_PASSWORD": "pg-Secret-1",
    "LLMFLOW_SERVE_TOKEN": "serve-secret-2",
    "PREFECT_API_AUTH_STRING": "admin:prefect-secret-3",
}
VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


class Missing(ValueError):
    """What `docker compose` says when a required variable is not set."""


def _interpolate(value, env: dict[str, str]):
    """Compose's interpolation with `env` as the environment: `${VAR}`, `${VAR:-default}`,
    `${VAR-default}`, and `${VAR:?error}` / `${VAR?error}`, which refuse to start without VAR."""
    if isinstance(value, str):

        def one(m: re.Match) -> str:
            name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
            given = env.get(name)
            unset = given is None or (op.startswith(":") and given == "")
            if op.endswith("?") and unset:
                raise Missing(f"required variable {name} is missing a value: {arg}")
            if op.endswith("-") and unset:
                return arg
            return given or ""

        return VARIABLE.sub(one, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    return value


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def compose(raw):
    """The stack as compose runs it with the secrets given and nothing else set."""
    return _interpolate(raw, SECRETS)


@pytest.fixture(scope="module")
def services(compose):
    return compose["services"]


def _env(svc: dict) -> dict[str, str]:
    return {k: str(v) for k, v in (svc.get("environment") or {}).items()}


def _cmd(svc: dict) -> list[str]:
    c = svc["command"]
    return c.split() if isinstance(c, str) else list(c)


def _flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def _health_url(svc: dict) -> str:
    test = " ".join(svc["healthcheck"]["test"])
    m = re.search(r"http://[^'\" ]+", test)
    assert m, f"healthcheck without a URL: {test}"
    return m.group(0)


def test_services_images_and_restart(services):
    assert set(services) == EXPECTED
    assert services["postgres"]["image"].startswith("postgres:")
    for name in EXPECTED - {"postgres"}:
        svc = services[name]
        assert svc["build"] == "." and svc["image"] == "llmflow:latest", name
    for name, svc in services.items():
        assert svc["restart"] in ("always", "unless-stopped", "on-failure"), name
    assert services["deploy"]["restart"] == "on-failure"  # one-shot: it must be able to finish


def test_healthchecks_probe_the_ports_the_commands_listen_on(services):
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    server = _cmd(services["prefect-server"])
    assert server[:3] == ["prefect", "server", "start"]
    url = urlsplit(_health_url(services["prefect-server"]))
    assert url.port == int(_flag(server, "--port")) and url.path == "/api/health"
    serve = _cmd(services["serve"])
    assert serve[:2] == ["llmflow", "serve"] and _flag(serve, "--host") == "0.0.0.0"
    url = urlsplit(_health_url(services["serve"]))
    assert url.port == int(_flag(serve, "--port")) and url.path == "/health"
    assert [p.split(":", 1)[1] for p in services["serve"]["ports"]] == [f"{url.port}:{url.port}"]
    worker = _cmd(services["worker"])
    assert "--with-healthcheck" in worker and _flag(worker, "--type") == "process"
    url = urlsplit(_health_url(services["worker"]))
    assert (
        url.port == int(_env(services["worker"])["PREFECT_WORKER_WEBSERVER_PORT"]) and url.path == "/health"
    )


def test_depends_on_conditions(services):
    for name, svc in services.items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            cond = spec["condition"]
            if cond == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s health, which has no check"
            else:
                assert cond == "service_completed_successfully", (name, dep, cond)
    assert services["prefect-server"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["deploy"]["condition"] == "service_completed_successfully"
    assert set(services["serve"]["depends_on"]) == {"postgres", "prefect-server"}
    assert _flag(_cmd(services["worker"]), "--pool") == _flag(_cmd(services["deploy"]), "--pool")


def test_database_urls_point_at_postgres_with_its_credentials(services, monkeypatch):
    pg = _env(services["postgres"])
    server_env = _env(services["prefect-server"])
    url = server_env["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    parts = urlsplit(url)
    assert parts.scheme == "postgresql+asyncpg" and parts.hostname == "postgres" and parts.port == 5432
    assert (parts.username, parts.password, parts.path) == (
        pg["POSTGRES_USER"],
        pg["POSTGRES_PASSWORD"],
        "/" + pg["POSTGRES_DB"],
    )
    # the names are the ones Prefect reads
    from prefect.settings.models.server.database import ServerDatabaseSettings
    from prefect.settings.models.server.ui import ServerUISettings
    from prefect.settings.models.worker import WorkerWebserverSettings

    for key, value in {**server_env, **_env(services["worker"])}.items():
        monkeypatch.setenv(key, value)
    assert ServerDatabaseSettings().connection_url.get_secret_value() == url
    assert ServerUISettings().api_url == "http://localhost:4200/api"
    assert WorkerWebserverSettings().port == 8080

    from deployments.feedback import resolve_url

    fb = urlsplit(_env(services["serve"])["LLMFLOW_FEEDBACK_URL"])
    assert fb.hostname == "postgres" and (fb.username, fb.password) == (
        pg["POSTGRES_USER"],
        pg["POSTGRES_PASSWORD"],
    )
    assert resolve_url(fb.geturl()).startswith("postgresql+psycopg://")


def test_clients_reach_the_server_and_share_llmflow_home(compose, services):
    port = _flag(_cmd(services["prefect-server"]), "--port")
    mounts = {}
    for name in ("deploy", "worker", "serve", "dask-worker"):
        env = _env(services[name])
        api = urlsplit(env["PREFECT_API_URL"])
        assert (api.hostname, str(api.port), api.path) == ("prefect-server", port, "/api"), name
        vols = dict(v.split(":", 1) for v in services[name]["volumes"])
        assert env["LLMFLOW_HOME"] in vols.values(), f"{name}: LLMFLOW_HOME is not on a volume"
        mounts[name] = {src for src, dst in vols.items() if dst == env["LLMFLOW_HOME"]}
    assert mounts["worker"] == mounts["serve"] == mounts["dask-worker"] == {"llmflow-home"}
    assert set(compose["volumes"]) == {"pgdata", "llmflow-home"}
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert "LLMFLOW_SERVE_TOKEN" in _env(services["serve"])


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _required(raw) -> dict[str, set[str]]:
    """Variable -> the operators compose applies to it anywhere in the file."""
    found: dict[str, set[str]] = {}
    for text in _strings(raw):
        for m in VARIABLE.finditer(text):
            found.setdefault(m.group(1), set()).add(m.group(2) or "")
    return found


def test_every_secret_must_be_given_and_has_no_default(raw):
    ops = _required(raw)
    for name in SECRETS:  # required wherever it is used: `:?`, so an empty value fails too
        assert ops[name] == {":?"}, f"{name} is used as {ops[name]}"
    for name in SECRETS:
        with pytest.raises(Missing, match=f"required variable {name} is missing a value: set {name}"):
            _interpolate(raw, {k: v for k, v in SECRETS.items() if k != name})
        with pytest.raises(Missing, match=name):
            _interpolate(raw, {**SECRETS, name: ""})
    text = (ROOT / "docker-compose.yml").read_text()
    assert ":llmflow@" not in text and "PASSWORD:-" not in text and "TOKEN:-" not in text


def test_the_secrets_reach_every_service_that_needs_them(services, monkeypatch):
    pg = _env(services["postgres"])
    assert pg["POSTGRES_PASSWORD"] == SECRETS["POSTGRES_PASSWORD"]
    for name in ("prefect-server", "deploy", "worker", "serve"):
        env = _env(services[name])
        urls = [v for k, v in env.items() if k.endswith("_URL") and "@postgres:" in v]
        assert urls and all(urlsplit(u).password == SECRETS["POSTGRES_PASSWORD"] for u in urls), name
    assert _env(services["serve"])["LLMFLOW_SERVE_TOKEN"] == SECRETS["LLMFLOW_SERVE_TOKEN"]
    # the server asks for the auth string its clients send; read back through Prefect's settings
    from prefect.settings.models.api import APISettings
    from prefect.settings.models.server.api import ServerAPISettings

    for key, value in _env(services["prefect-server"]).items():
        monkeypatch.setenv(key, value)
    expected = SECRETS["PREFECT_API_AUTH_STRING"]
    assert ServerAPISettings().auth_string.get_secret_value() == expected
    for name in ("deploy", "worker", "serve"):
        for key, value in _env(services[name]).items():
            monkeypatch.setenv(key, value)
        assert APISettings().auth_string.get_secret_value() == expected, name


def test_published_ports_bind_loopback_unless_told(raw, services):
    from deployments.access import BindError, check_bind

    published = {name: svc["ports"] for name, svc in services.items() if svc.get("ports")}
    assert set(published) == {"prefect-server", "serve"}  # PostgreSQL, the worker: inside only
    for name, ports in published.items():
        for port in ports:
            ip, host_port, container_port = port.rsplit(":", 2)
            assert ip == "127.0.0.1" and host_port == container_port, (name, port)
    opened = _interpolate(raw, {**SECRETS, "LLMFLOW_BIND": "0.0.0.0"})["services"]
    for name in published:
        assert all(p.startswith("0.0.0.0:") for p in opened[name]["ports"]), name
    # inside its container the service binds 0.0.0.0: allowed only because a token is required
    serve = services["serve"]
    check_bind(_flag(_cmd(serve), "--host"), _env(serve)["LLMFLOW_SERVE_TOKEN"])
    with pytest.raises(BindError):
        check_bind(_flag(_cmd(serve), "--host"), None)


def test_dockerfile_installs_cpu_torch_first_and_copies_every_package():
    lines = [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines()]
    torch = next(i for i, ln in enumerate(lines) if ln.startswith("RUN pip install") and "torch" in ln)
    project = next(i for i, ln in enumerate(lines) if re.match(r'RUN pip install "?\.', ln))
    assert torch < project, "torch must be installed before the project"
    assert "--index-url" in lines[torch] and any("whl/cpu" in ln for ln in lines[:torch])
    pyproject = (ROOT / "pyproject.toml").read_text()
    packages = re.search(r"include = \[([^\]]*)\]", pyproject).group(1)
    for pkg in re.findall(r'"(\w+)\*"', packages):
        assert f"COPY {pkg} ./{pkg}" in lines, f"the image lacks the {pkg} package"
    assert "COPY configs ./configs" in lines
    assert lines[0].startswith("#") and any(ln.startswith("FROM python:3.1") for ln in lines)
    assert any(ln.startswith("ENV") for ln in lines) and "LLMFLOW_HOME=/data/llmflow \\" in lines


def test_the_data_flow_runs_on_the_stacks_dask_cluster(services):
    """The deployments' config sends the shards to the scheduler service, whose workers join it
    and share the store; the Prefect worker waits for the scheduler to be healthy."""
    from llmflow.config import load_config

    deploy = _cmd(services["deploy"])
    sets = [deploy[i + 1] for i, a in enumerate(deploy) if a == "--set"]
    cfg = load_config("demo", sets)  # the deploy command's own preset (its --config default)
    assert cfg.runner.kind == "dask"
    sched = _cmd(services["dask-scheduler"])
    assert sched[:2] == ["dask", "scheduler"] and "ports" not in services["dask-scheduler"]
    address = urlsplit(cfg.runner.dask.address)
    assert (address.scheme, address.hostname, address.port) == (
        "tcp",
        "dask-scheduler",
        int(_flag(sched, "--port")),
    )
    health = urlsplit(_health_url(services["dask-scheduler"]))
    assert health.path == "/health" and f":{health.port}" == _flag(sched, "--dashboard-address")
    worker = _cmd(services["dask-worker"])
    assert worker[:3] == ["dask", "worker", cfg.runner.dask.address]
    assert _flag(worker, "--nthreads") == "1" and int(_flag(worker, "--nworkers")) >= 1
    assert services["dask-worker"]["depends_on"]["dask-scheduler"]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["dask-scheduler"]["condition"] == "service_healthy"


def test_the_commands_the_stack_runs_exist():
    """`llmflow serve` and `llmflow deploy` come from the CLI (deployments/cli_ops.py)."""
    from deployments import cli

    names = {c.name or c.callback.__name__ for c in cli.app.registered_commands}
    assert {"serve", "deploy"} <= names
