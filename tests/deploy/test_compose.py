"""docker-compose.yml against the Compose Specification, and what no schema sees: settings, ports, secrets."""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from services.devices import DEVICE_CLASS_PATTERN, LABEL_PREFIX, node_device_class
from tests.deploy.common import (
    COMPOSE_FILE,
    DOCKERFILES,
    ENV_EXAMPLE,
    HOSTNET_FILE,
    ROOT,
    SCHEMAS,
    _argvs,
    _check_settings,
    _commented_keys,
    _host_port,
    _option,
    _read_env_file,
    _settings_from,
    _shell_expand,
)
from tests.deploy.compose import (
    ENV_CASES,
    REQUIRED_SECRETS,
    _raw_compose,
    compose,
    healthcheck_argv,
    interpolate,
    own_dockerfile,
    published_ports,
    service_argv,
    service_env,
    services,
    url_port,
)
from tests.deploy.dockerfiles import dockerfile_exposed, dockerfile_healthcheck


@pytest.mark.parametrize("case", sorted(ENV_CASES))
def test_compose_file_matches_the_compose_specification(case: str) -> None:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    documents = {"docker-compose.yml": compose(case)}
    env = ENV_CASES[case]() | {"NFS_SERVER": "nfs.local", "NFS_EXPORT": "/srv/hyctas"}
    documents["docker/compose.hostnet.yml"] = interpolate(_raw_compose(HOSTNET_FILE), env)
    for name, document in documents.items():
        errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
        assert not errors, f"{name}:\n" + "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_compose_overrides_name_existing_services() -> None:
    base = services()
    override = _raw_compose(HOSTNET_FILE)
    assert set(override["services"]) <= set(base), "docker/compose.hostnet.yml overrides unknown services"
    assert set(override.get("volumes", {})) <= set(compose()["volumes"])


def test_compose_services_are_well_formed() -> None:
    doc = compose()
    volumes = set(doc.get("volumes", {}))
    for name, svc in doc["services"].items():
        assert "image" in svc or "build" in svc, f"{name}: neither image nor build"
        if "image" in svc:
            assert ":" in svc["image"].rsplit("/", 1)[-1], f"{name}: pin the image tag ({svc['image']})"
            assert not svc["image"].endswith(":latest"), name
        built = own_dockerfile(svc)
        if built is not None:
            assert built.exists(), f"{name}: {built} does not exist"
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0] if isinstance(mount, str) else mount.get("source", "")
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: bind mount {source} does not exist"
            elif source:
                assert source in volumes, f"{name}: volume {source} is not declared"
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in doc["services"], f"{name} depends on unknown {dep}"
            condition = cond.get("condition", "service_started") if isinstance(cond, dict) else "service_started"
            assert condition in ("service_started", "service_healthy", "service_completed_successfully"), condition
            target = doc["services"][dep]
            if condition == "service_healthy":
                has_check = healthcheck_argv(target) is not None or (
                    "healthcheck" not in target
                    and own_dockerfile(target) is not None
                    and dockerfile_healthcheck(own_dockerfile(target)) is not None
                )
                assert has_check, f"{name} waits for {dep} to be healthy, but {dep} has no health check"
            if condition == "service_completed_successfully":
                assert target.get("restart", "no") == "no", f"{dep} is a one-shot step: restart 'no'"
            assert not target.get("profiles") or set(target["profiles"]) <= set(svc.get("profiles", [])), (
                f"{name} depends on {dep}, which only runs under profiles {target['profiles']}"
            )
        if "healthcheck" in svc and not svc["healthcheck"].get("disable"):
            for key in ("interval", "timeout", "start_period"):
                if key in svc["healthcheck"]:
                    assert re.fullmatch(r"(\d+(ms|s|m|h))+", str(svc["healthcheck"][key])), f"{name}: {key}"
        long_running = svc.get("restart", "no") != "no"
        if long_running:
            assert (
                healthcheck_argv(svc) is not None
                or name.endswith("-exporter")
                or (built is not None and "healthcheck" not in svc and dockerfile_healthcheck(built))
            ), f"{name}: long-running service without a health check"


def test_backing_services_still_run_alone() -> None:
    svcs = services("secrets-only")
    for name, data_dir in (("postgres", "/var/lib/postgresql/data"), ("redis", "/data")):
        svc = svcs[name]
        assert not svc.get("depends_on") and not svc.get("profiles"), f"`docker compose up {name}` must work alone"
        assert healthcheck_argv(svc), f"{name}: health check"
        assert any(str(m).endswith(f":{data_dir}") for m in svc["volumes"]), f"{name}: data on a volume"
        assert all(p.host_ip == "127.0.0.1" for p in published_ports(svc)), f"{name}: localhost only"
        assert published_ports(svc), f"{name}: published on 127.0.0.1 for developers"
    redis = service_argv(svcs["redis"])
    assert _option(redis, "--appendonly") == "yes", "Redis persists the job stream (AOF)"
    assert _option(redis, "--maxmemory-policy") == "noeviction", "Redis must never evict queued jobs"


def test_ray_workers_scale_with_gpu_and_cpu_profiles() -> None:
    svcs = services()
    head = service_argv(svcs["ray-head"])
    (ray_start,) = [w for w in _argvs(head) if w[:3] == ["ray", "start", "--head"]]
    gcs = f"ray-head:{_option(ray_start, '--port')}"
    for name, profile in (("ray-worker", "gpu"), ("ray-worker-cpu", "cpu")):
        svc = svcs[name]
        assert svc.get("profiles") == [profile], f"{name}: profile {profile}"
        assert "container_name" not in svc and not svc.get("ports"), f"{name}: must scale (`--scale {name}=N`)"
        argv = service_argv(svc)
        assert argv[:2] == ["ray", "start"] and "--block" in argv, f"{name}: a foreground Ray node"
        assert _option(argv, "--address") == gcs, f"{name}: joins {gcs}"
        devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        if profile == "gpu":
            assert devices, "ray-worker: GPU reservation in deploy.resources.reservations.devices"
            for device in devices:
                assert device.get("driver") == "nvidia" and "gpu" in device["capabilities"], device
                assert "device_ids" not in device, "fixed device ids defeat --scale"
                assert "count" in device and re.fullmatch(r"all|\d+", str(device["count"])), device
        else:
            assert not devices and _option(argv, "--num-gpus") == "0", "ray-worker-cpu: CPU only"
    for name in ("worker",):
        assert "container_name" not in svcs[name] and not svcs[name].get("ports"), f"{name}: must scale"
    # nothing outside a profile needs a profiled service
    for name, svc in svcs.items():
        if not svc.get("profiles"):
            for dep in svc.get("depends_on") or {}:
                assert not svcs[dep].get("profiles"), f"{name} depends on profiled {dep}"


def test_ray_workers_name_their_device_class() -> None:
    """Each Ray worker node carries one ``hyctas_device:<class>`` resource (services/devices.py):
    the GPU class from RAY_WORKER_DEVICE_CLASS, the CPU class "cpu" like the unlabelled head."""
    svcs = services()
    for name, variable, default in (
        ("ray-worker", "RAY_WORKER_DEVICE_CLASS", "gpu"),
        ("ray-worker-cpu", "RAY_WORKER_CPU_CLASS", "cpu"),
    ):
        argv = service_argv(svcs[name])
        resources = json.loads(_option(argv, "--resources") or "{}")
        labels = [k for k in resources if k.startswith(LABEL_PREFIX)]
        assert len(labels) == 1 and resources[labels[0]] > 0, f"{name}: one device class label, got {resources}"
        assert node_device_class(resources) == default, f"{name}: {variable} defaults to {default}"
        assert re.fullmatch(DEVICE_CLASS_PATTERN, default)
    raw = COMPOSE_FILE.read_text()
    assert "${RAY_WORKER_DEVICE_CLASS:-gpu}" in raw and "${RAY_WORKER_CPU_CLASS:-cpu}" in raw


@pytest.mark.parametrize("case", sorted(ENV_CASES))
@pytest.mark.parametrize("name", ["controller", "migrate", "worker", "ray-head", "ray-worker", "ray-worker-cpu"])
def test_compose_sets_every_setting(name: str, case: str) -> None:
    """Every HYCTAS_* variable of services/settings.py, for every process of the service."""
    _check_settings(service_env(services(case)[name]), f"compose {name} ({case})")


def test_compose_environment_is_the_same_for_every_process() -> None:
    svcs = services()
    reference = {k: v for k, v in service_env(svcs["controller"]).items() if k.startswith("HYCTAS_")}
    for name in ("migrate", "worker", "ray-head", "ray-worker", "ray-worker-cpu"):
        env = {k: v for k, v in service_env(svcs[name]).items() if k.startswith("HYCTAS_")}
        assert env == reference, f"{name}: settings differ from the controller's"


def test_compose_ports_agree() -> None:
    svcs = services()
    env = service_env(svcs["controller"])
    settings = _settings_from(env)

    def container_ports(name: str) -> set[int]:
        return {p.container_port for p in published_ports(svcs[name])}

    # controller: --port, published port, health check
    controller = service_argv(svcs["controller"])
    port = int(_option(controller, "--port") or 0)
    assert port in container_ports("controller") and port == url_port(healthcheck_argv(svcs["controller"]) or [])
    assert _option(controller, "--host") == "0.0.0.0", "the controller must listen outside its container"
    # database and Redis URLs point at the compose services, with their credentials
    db = urlsplit(settings.database_url)
    pg_env = service_env(svcs["postgres"])
    assert (db.hostname, db.port) == ("postgres", 5432) and 5432 in container_ports("postgres")
    assert (db.username, db.password, db.path) == (
        pg_env["POSTGRES_USER"],
        pg_env["POSTGRES_PASSWORD"],
        f"/{pg_env['POSTGRES_DB']}",
    )
    redis_url = urlsplit(settings.redis_url)
    assert (redis_url.hostname, redis_url.port) == ("redis", 6379) and 6379 in container_ports("redis")
    assert (redis_url.password or "") == _option(service_argv(svcs["redis"]), "--requirepass")
    # Ray: GCS, client (HYCTAS_RAY_ADDRESS), metrics, dashboard and Serve ports of the head
    head_cmds = list(_argvs(service_argv(svcs["ray-head"])))
    (ray_start,) = [w for w in head_cmds if w[:3] == ["ray", "start", "--head"]]
    (serve_start,) = [w for w in head_cmds if w[:2] == ["serve", "start"]]
    assert _host_port(settings.ray_address or "") == ("ray-head", int(_option(ray_start, "--ray-client-server-port")))
    metrics = int(_option(ray_start, "--metrics-export-port") or 0)
    for name in ("ray-worker", "ray-worker-cpu"):
        assert int(_option(service_argv(svcs[name]), "--metrics-export-port") or 0) == metrics, name
    head_env = service_env(svcs["ray-head"])
    serve_port = int(_shell_expand(_option(serve_start, "--http-port") or "", head_env))
    assert serve_port == settings.serve_port, "the head starts Serve on HYCTAS_SERVE_PORT"
    assert _shell_expand(_option(serve_start, "--http-host") or "", head_env) == settings.serve_host
    head_ports = {p.container_port: p for p in published_ports(svcs["ray-head"])}
    assert head_ports[serve_port].host_port == "8001", "Ray Serve is published on 8001 (the controller has 8000)"
    dashboard = int(_option(ray_start, "--dashboard-port") or 0)
    assert head_ports[dashboard].host_ip == "127.0.0.1", "the Ray dashboard stays on localhost"
    assert set(head_ports) == {serve_port, dashboard}, "only Serve and the dashboard leave the Ray head"
    head_check = healthcheck_argv(svcs["ray-head"]) or []
    assert _option(head_check, "--address") == f"127.0.0.1:{_option(ray_start, '--port')}"
    # worker metrics: settings, health check, image
    assert settings.worker_metrics_port == url_port(healthcheck_argv(svcs["worker"]) or [])
    assert settings.worker_metrics_port in dockerfile_exposed(DOCKERFILES["worker"])
    # exporters point at the backing services
    assert service_env(svcs["postgres-exporter"])["DATA_SOURCE_URI"].startswith("postgres:5432/")
    assert service_env(svcs["redis-exporter"])["REDIS_ADDR"] == "redis://redis:6379"


def _prometheus_targets() -> dict[str, dict[str, set[int]]]:
    """job -> host -> ports, from docker/prometheus/prometheus.yml."""
    config = yaml.safe_load((ROOT / "docker" / "prometheus" / "prometheus.yml").read_text())
    jobs: dict[str, dict[str, set[int]]] = {}
    for job in config["scrape_configs"]:
        hosts = jobs.setdefault(job["job_name"], {})
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                hosts.setdefault(host, set()).add(int(port))
        for dns in job.get("dns_sd_configs", []):
            assert dns.get("type", "SRV") == "A", "A records carry no port: give one"
            for host in dns["names"]:
                hosts.setdefault(host, set()).add(int(dns["port"]))
    return jobs


def test_prometheus_scrapes_every_service() -> None:
    svcs = services()
    jobs = _prometheus_targets()
    scraped = {host: ports for hosts in jobs.values() for host, ports in hosts.items()}
    assert set(scraped) - {"localhost"} <= set(svcs), f"targets that are no service: {set(scraped) - set(svcs)}"
    assert scraped["localhost"] == {9090} and {p.container_port for p in published_ports(svcs["prometheus"])} == {9090}
    for name, svc in svcs.items():
        if svc.get("restart", "no") == "no" or name == "prometheus":
            continue  # one-shot steps
        if name in scraped:
            continue
        exporters = [
            other
            for other in scraped
            if other.endswith("-exporter") and any(f"{name}:" in value for value in service_env(svcs[other]).values())
        ]
        assert exporters, f"service {name} is not scraped (directly or through an exporter)"
    env = service_env(svcs["controller"])
    head = [w for w in _argvs(service_argv(svcs["ray-head"])) if w[:2] == ["ray", "start"]][0]
    expected = {
        "controller": {int(_option(service_argv(svcs["controller"]), "--port") or 0)},
        "worker": {int(env["HYCTAS_WORKER_METRICS_PORT"])},
        "ray-head": {int(_option(head, "--metrics-export-port") or 0)},
        "ray-worker": {int(_option(head, "--metrics-export-port") or 0)},
        "ray-worker-cpu": {int(_option(head, "--metrics-export-port") or 0)},
    }
    for host, ports in expected.items():
        assert scraped[host] == ports, f"{host}: scraped on {scraped[host]}, serves metrics on {ports}"


def _metric_names() -> set[str]:
    """The metrics services/metrics.py defines (first argument of each metric constructor)."""
    source = (ROOT / "services" / "metrics.py").read_text()
    names = set(re.findall(r"(?:Counter|Gauge|Histogram|Summary|\w+MetricFamily)\(\s*\"(hyctas_\w+)\"", source))
    assert names, "no metric found in services/metrics.py"
    return names


def _metric_base(name: str) -> str:
    return re.sub(r"_(total|bucket|sum|count|created)$", "", name)


def test_grafana_is_provisioned_with_a_dashboard_of_the_service_metrics() -> None:
    svcs = services()
    grafana = svcs["grafana"]
    mounts = {m.split(":")[0]: m.split(":")[1] for m in grafana["volumes"]}
    assert mounts["./docker/grafana/provisioning"] == "/etc/grafana/provisioning"
    provisioning = ROOT / "docker" / "grafana" / "provisioning"
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    host, port = _host_port(datasource["url"])
    assert host == "prometheus" and port in {p.container_port for p in published_ports(svcs["prometheus"])}
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "hyctas.yml").read_text())["providers"]
    assert mounts["./docker/grafana/dashboards"] == provider["options"]["path"]
    dashboards = sorted((ROOT / "docker" / "grafana" / "dashboards").glob("*.json"))
    assert dashboards
    defined = {_metric_base(name) for name in _metric_names()}
    used: set[str] = set()
    for path in dashboards:
        board = json.loads(path.read_text())
        assert board["uid"] and board["title"], path.name
        panels = board["panels"]
        ids = [panel["id"] for panel in panels]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in panels:
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == datasource["uid"], f"{path.name}: panel {panel['title']}"
            assert 0 <= panel["gridPos"]["x"] and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == datasource["uid"]
                for metric in re.findall(r"\bhyctas_\w+", target["expr"]):
                    assert _metric_base(metric) in defined, f"{path.name}: {metric} is not in services/metrics.py"
                    used.add(_metric_base(metric))
    assert defined <= used, f"metrics of services/metrics.py on no dashboard: {sorted(defined - used)}"


def test_compose_credentials_stay_on_localhost() -> None:
    raw = _raw_compose()
    # Only the controller's API (API keys) and Ray Serve may follow PUBLISH_ADDRESS; the rest is
    # published on 127.0.0.1 literally (PostgreSQL, Redis, Grafana have default credentials).
    public = {("controller", 8000), ("ray-head", 8000)}
    for name, svc in raw["services"].items():
        for port, entry in zip(
            published_ports(interpolate(svc, ENV_CASES["secrets-only"]())), svc.get("ports", []), strict=True
        ):
            text = str(entry)
            if (name, port.container_port) in public:
                assert text.startswith("${PUBLISH_ADDRESS:-127.0.0.1}:"), f"{name}: {text}"
            else:
                assert text.startswith("127.0.0.1:"), f"{name}: {text} is published beyond localhost"
    # no password literally in the file: every credential comes from .env
    for name, svc in raw["services"].items():
        raw_env = svc.get("environment", {})
        raw_env = raw_env if isinstance(raw_env, dict) else dict(e.split("=", 1) for e in raw_env)
        for key, value in raw_env.items():
            if re.search(r"PASSWORD|PASS$|SECRET|TOKEN|AUTH$", key):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), f"{name}: {key} must come from .env"
    secrets = ENV_CASES["secrets-only"]()
    for url_var, secret in (("HYCTAS_DATABASE_URL", "POSTGRES_PASSWORD"), ("HYCTAS_REDIS_URL", "REDIS_PASSWORD")):
        password = urlsplit(interpolate(raw["x-hyctas-env"][url_var], secrets)).password
        assert password == secrets[secret], f"{url_var}: the password comes from .env"
    env = _read_env_file(ENV_EXAMPLE)
    for key in ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "GRAFANA_ADMIN_PASSWORD"):
        assert env[key].startswith("change-me"), f".env.example: {key} is a placeholder to replace"


def test_compose_refuses_to_start_without_its_secrets() -> None:
    """Each secret is required (``${VAR:?...}``): without it interpolation fails naming it, as compose does."""
    raw = _raw_compose()
    for missing in REQUIRED_SECRETS:
        env = {k: v for k, v in ENV_CASES["secrets-only"]().items() if k != missing}
        with pytest.raises(KeyError, match=f"required variable {missing} is missing: set {missing} in .env"):
            interpolate(raw, env)
    text = COMPOSE_FILE.read_text()
    for secret in REQUIRED_SECRETS:  # never a fallback value anywhere
        assert not re.search(r"\$\{" + secret + r"(:?-)", text), f"{secret} has a default"
    redis = interpolate(raw, ENV_CASES["secrets-only"]())["services"]["redis"]["command"]
    assert redis[redis.index("--requirepass") + 1] == "s3cret-redis_password"


def test_env_example_documents_every_compose_variable() -> None:
    documented = set(_read_env_file(ENV_EXAMPLE)) | _commented_keys(ENV_EXAMPLE)
    for path in (COMPOSE_FILE, HOSTNET_FILE):
        text = path.read_text().replace("$$", "")
        used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
        assert used <= documented, f"{path.name}: variables missing from .env.example: {sorted(used - documented)}"
    assert "COMPOSE_PROFILES" in documented
