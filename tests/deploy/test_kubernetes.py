"""The Kubernetes manifests: strict schemas per version, KubeRay and monitor fields, references, ports."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from services.devices import DEVICE_CLASS_PATTERN, LABEL_PREFIX, node_device_class
from tests.deploy.common import (
    K8S,
    K8S_VERSIONS,
    MONITOR_KINDS,
    NAMESPACE,
    OVERLAYS,
    RAY_KINDS,
    ROOT,
    _check_settings,
    _host_port,
    _option,
    _read_env_file,
    _settings_from,
)
from tests.deploy.kustomize import (
    _yaml_docs,
    all_renders,
    command_of,
    container_env,
    container_port,
    find,
    kustomization,
    one,
    pod_templates,
    ray_templates,
    render,
    selects,
)


def test_kustomizations_resolve() -> None:
    dirs = sorted({p.parent for p in K8S.rglob("kustomization.yaml")})
    assert {K8S / "base", K8S / "datastores", K8S / "monitoring"} <= set(dirs)
    ignored = (ROOT / "deploy" / ".gitignore").read_text().split()
    for directory in dirs:
        k = kustomization(directory)
        for patch in k.get("patches", []):
            if "path" in patch:
                assert (directory / patch["path"]).exists(), f"{directory}: {patch['path']}"
        for gen in k.get("secretGenerator", []):
            for name in gen.get("envs", []):
                assert name in ignored, f"deploy/.gitignore must ignore {name} (real secrets)"
                assert (directory / f"{name}.example").exists(), f"{directory}: commit {name}.example"
        objects = render(directory)
        for image in k.get("images", []):
            assert re.search(rf"\b{re.escape(image['newName'])}:", json.dumps(objects)), f"{directory}: {image}"
    for overlay in OVERLAYS:
        objects = render(K8S / "overlays" / overlay)
        keys = [(o["apiVersion"], o["kind"], o["metadata"]["name"]) for o in objects]
        assert len(keys) == len(set(keys)), f"{overlay}: duplicate objects"
        for obj in objects:
            if obj["kind"] != "Namespace":
                assert obj["metadata"].get("namespace") == NAMESPACE, f"{overlay}: {obj['kind']} namespace"


def _core_objects() -> Iterator[tuple[str, dict[str, Any]]]:
    seen = set()
    for overlay, objects in all_renders():
        for obj in objects:
            if (obj["apiVersion"], obj["kind"]) in RAY_KINDS | MONITOR_KINDS:
                continue
            key = json.dumps(obj, sort_keys=True)
            if key not in seen:
                seen.add(key)
                yield f"{overlay}: {obj['kind']}/{obj['metadata']['name']}", obj


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_kinds_match_the_kubernetes_schemas(version: str) -> None:
    failures = []
    for where, obj in _core_objects():
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            failures.append(f"{where}: {'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            failures.append(f"{where}: {e.message}")
    for overlay, objects in all_renders():
        for obj in objects:
            if (obj["apiVersion"], obj["kind"]) in RAY_KINDS:
                for group, _, template in ray_templates(obj):
                    pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": group}}
                    try:
                        kubernetes_validate.validate(pod_template | {"template": template}, version, strict=True)
                    except kubernetes_validate.ValidationError as e:
                        path = ".".join(map(str, e.path))
                        failures.append(
                            f"{overlay}: {obj['kind']}/{obj['metadata']['name']}[{group}] {path}: {e.message}"
                        )
    assert not failures, "\n".join(failures)


# Fields of the ray.io/v1 API (KubeRay) used or allowed here: a typo is an unknown field.
RAY_CLUSTER_FIELDS = {
    "rayVersion",
    "enableInTreeAutoscaling",
    "autoscalerOptions",
    "headGroupSpec",
    "workerGroupSpecs",
    "headServiceAnnotations",
    "suspend",
    "gcsFaultToleranceOptions",
}


AUTOSCALER_FIELDS = {"upscalingMode", "idleTimeoutSeconds", "resources", "image", "imagePullPolicy", "env", "envFrom"}


HEAD_GROUP_FIELDS = {"serviceType", "headService", "enableIngress", "rayStartParams", "template"}


WORKER_GROUP_FIELDS = {
    "groupName",
    "replicas",
    "minReplicas",
    "maxReplicas",
    "idleTimeoutSeconds",
    "rayStartParams",
    "template",
    "scaleStrategy",
    "numOfHosts",
    "suspend",
}


RAY_SERVICE_FIELDS = {"serveConfigV2", "rayClusterConfig", "upgradeStrategy", "excludeHeadPodFromServeSvc"}


def check_ray_cluster_spec(spec: dict[str, Any], where: str, *, gpu: bool) -> None:
    assert set(spec) <= RAY_CLUSTER_FIELDS, f"{where}: unknown fields {set(spec) - RAY_CLUSTER_FIELDS}"
    assert isinstance(spec["rayVersion"], str), f"{where}: rayVersion is a string"
    assert spec.get("enableInTreeAutoscaling") is True, f"{where}: autoscaler on"
    autoscaler = spec.get("autoscalerOptions", {})
    assert set(autoscaler) <= AUTOSCALER_FIELDS, f"{where}: autoscalerOptions {set(autoscaler) - AUTOSCALER_FIELDS}"
    assert autoscaler.get("upscalingMode", "Default") in ("Default", "Aggressive", "Conservative")
    head = spec["headGroupSpec"]
    assert set(head) <= HEAD_GROUP_FIELDS, f"{where}: headGroupSpec {set(head) - HEAD_GROUP_FIELDS}"
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{where}: keep the Ray head (dashboard) internal"
    groups = spec["workerGroupSpecs"]
    assert groups, f"{where}: no worker group"
    names = [group["groupName"] for group in groups]
    assert len(names) == len(set(names)), f"{where}: duplicate groupName"
    for group in [head, *groups]:
        label = group.get("groupName", "head")
        params = group.get("rayStartParams", {})
        assert all(isinstance(v, str) for v in params.values()), f"{where}[{label}]: rayStartParams are strings"
        containers = group["template"]["spec"]["containers"]
        ray_container = containers[0]  # KubeRay runs Ray in the first container
        metrics = container_port(ray_container, "metrics")
        assert metrics is not None and str(metrics) == params.get("metrics-export-port"), (
            f"{where}[{label}]: container port `metrics` must be the metrics-export-port"
        )
        assert "command" not in ray_container and "args" not in ray_container, "KubeRay writes the ray start command"
    head_container = head["template"]["spec"]["containers"][0]
    for name, port in (("gcs-server", 6379), ("dashboard", 8265), ("client", 10001)):
        assert container_port(head_container, name) == port, f"{where}: head port {name} = {port}"
    gpu_groups = []
    for group in groups:
        label = f"{where}[{group['groupName']}]"
        assert set(group) <= WORKER_GROUP_FIELDS, f"{label}: unknown fields {set(group) - WORKER_GROUP_FIELDS}"
        lo, n, hi = group["minReplicas"], group.get("replicas", group["minReplicas"]), group["maxReplicas"]
        assert all(isinstance(v, int) and v >= 0 for v in (lo, n, hi)), label
        assert lo <= n <= hi and lo < hi, f"{label}: minReplicas <= replicas <= maxReplicas, and room to scale"
        resources = group["template"]["spec"]["containers"][0].get("resources", {})
        limits, requests = resources.get("limits", {}), resources.get("requests", {})
        if "nvidia.com/gpu" in limits:
            assert int(limits["nvidia.com/gpu"]) >= 1, label
            assert int(requests.get("nvidia.com/gpu", limits["nvidia.com/gpu"])) == int(limits["nvidia.com/gpu"]), (
                f"{label}: extended resources need requests == limits"
            )
            gpu_groups.append(group["groupName"])
        assert "nvidia.com/gpu" in limits or "nvidia.com/gpu" not in requests, label
    if gpu:
        assert gpu_groups, f"{where}: a GPU worker group (nvidia.com/gpu limits)"


def _base_objects() -> tuple[dict[str, Any], ...]:
    return render(K8S / "base")


def test_raycluster_has_an_autoscaled_gpu_worker_group() -> None:
    cluster = one(_base_objects(), "RayCluster", "hyctas-ray")
    assert cluster["apiVersion"] == "ray.io/v1"
    check_ray_cluster_spec(cluster["spec"], "RayCluster/hyctas-ray", gpu=True)


def _group_device_class(group: dict[str, Any]) -> str:
    """The device class a worker group's nodes carry: ``rayStartParams.resources`` as KubeRay takes
    it (a JSON object in a quoted string) read the way Ray reads a node's resources."""
    raw = group.get("rayStartParams", {}).get("resources", '"{}"')
    assert raw.startswith('"') and raw.endswith('"'), f"{group['groupName']}: resources is a quoted JSON string"
    resources = json.loads(raw[1:-1].replace('\\"', '"'))
    labels = [k for k in resources if k.startswith(LABEL_PREFIX)]
    assert len(labels) == 1, f"{group['groupName']}: one {LABEL_PREFIX}<class> resource, got {resources}"
    return node_device_class(resources)


def test_gpu_worker_groups_are_one_device_class_each() -> None:
    """Mixed GPU classes run as one KubeRay worker group per class: each group's pods land on its
    GPU product (nodeSelector) and carry their class, which searches target (services/devices.py)."""
    cluster = one(_base_objects(), "RayCluster", "hyctas-ray")
    groups = cluster["spec"]["workerGroupSpecs"]
    classes = {}
    for group in groups:
        spec = group["template"]["spec"]
        assert "nvidia.com/gpu" in spec["containers"][0]["resources"]["limits"], group["groupName"]
        assert spec["nodeSelector"]["nvidia.com/gpu.product"], f"{group['groupName']}: pinned to its GPU product"
        classes[group["groupName"]] = _group_device_class(group)
    assert len(groups) >= 2 and len(set(classes.values())) == len(groups), classes
    assert all(re.fullmatch(DEVICE_CLASS_PATTERN, c) for c in classes.values())
    products = [g["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.product"] for g in groups]
    assert len(set(products)) == len(products), "two classes on one GPU product would mix latencies"
    # The dev overlay (no GPUs) keeps one CPU group of class "cpu".
    dev = one(render(K8S / "overlays" / "dev"), "RayCluster", "hyctas-ray")
    (cpu,) = dev["spec"]["workerGroupSpecs"]
    assert _group_device_class(cpu) == "cpu" and "nodeSelector" not in cpu["template"]["spec"]


def test_rayservice_serves_the_applications() -> None:
    service = one(_base_objects(), "RayService", "hyctas-serve")
    assert service["apiVersion"] == "ray.io/v1"
    spec = service["spec"]
    assert set(spec) <= RAY_SERVICE_FIELDS, f"RayService: unknown fields {set(spec) - RAY_SERVICE_FIELDS}"
    check_ray_cluster_spec(spec["rayClusterConfig"], "RayService/hyctas-serve", gpu=True)
    assert isinstance(spec["serveConfigV2"], str), "serveConfigV2 is a YAML string"
    config = yaml.safe_load(spec["serveConfigV2"])
    head = spec["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert config["http_options"]["host"] == "0.0.0.0"
    assert config["http_options"]["port"] == container_port(head, "serve"), "Serve port = head container port `serve`"
    apps = config["applications"]
    assert apps and len({a["name"] for a in apps}) == len(apps)
    assert len({a["route_prefix"] for a in apps}) == len(apps)
    for application in apps:
        assert re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", application["import_path"]), application
        assert application["route_prefix"].startswith("/")


def test_rayservice_import_paths_exist() -> None:
    service = one(_base_objects(), "RayService", "hyctas-serve")
    for application in yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]:
        module, attr = application["import_path"].split(":")
        path = ROOT / Path(*module.split("."))
        source = path.with_suffix(".py") if path.with_suffix(".py").exists() else path / "__init__.py"
        assert source.exists(), f"RayService imports {application['import_path']}: no module {module}"
        names = set()
        for node in ast.parse(source.read_text()).body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef):
                names.add(node.name)
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names.update(t.id for t in targets if isinstance(t, ast.Name))
        assert attr in names, f"RayService imports {application['import_path']}: {module} defines no {attr}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workloads_selectors_probes_and_volumes(overlay: str) -> None:
    objects = render(K8S / "overlays" / overlay)
    pvcs = {o["metadata"]["name"] for o in find(objects, "PersistentVolumeClaim")}
    for obj in objects:
        where = f"{overlay}: {obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] in ("Deployment", "StatefulSet"):
            labels = obj["spec"]["template"]["metadata"]["labels"]
            assert selects(obj["spec"]["selector"]["matchLabels"], labels), f"{where}: selector vs template labels"
        if obj["kind"] == "StatefulSet":
            governing = one(objects, "Service", obj["spec"]["serviceName"])
            assert governing["spec"].get("clusterIP") == "None", f"{where}: governing Service must be headless"
    for where, template in pod_templates(objects):
        spec = template["spec"]
        allowed = ("Never", "OnFailure") if where.startswith(("Job/", "CronJob/")) else (None, "Always")
        assert spec.get("restartPolicy") in allowed, f"{overlay}: {where}: restartPolicy {spec.get('restartPolicy')}"
        claim_templates = set()
        for obj in objects:
            if obj["kind"] == "StatefulSet" and f"StatefulSet/{obj['metadata']['name']}" == where:
                claim_templates = {t["metadata"]["name"] for t in obj["spec"].get("volumeClaimTemplates", [])}
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in pvcs, f"{where}: PVC of {volume['name']}"
        for container in spec["containers"]:
            label = f"{overlay}: {where}/{container['name']}"
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes or mount["name"] in claim_templates, f"{label}: volume {mount['name']}"
            for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
                probe = container.get(probe_name)
                if not probe:
                    continue
                action = probe.get("httpGet") or probe.get("tcpSocket") or probe.get("grpc")
                if action:
                    assert container_port(container, action["port"]) is not None, f"{label}: {probe_name} port"
                if "httpGet" in probe:
                    assert probe["httpGet"]["path"].startswith("/"), label
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), f"{label}: requests cpu and memory"
            assert "memory" in resources.get("limits", {}), f"{label}: a memory limit"
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{label}: pin {image}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_and_monitors_reach_declared_ports(overlay: str) -> None:
    objects = render(K8S / "overlays" / overlay)
    pods = list(pod_templates(objects))
    for svc in find(objects, "Service"):
        where = f"{overlay}: Service/{svc['metadata']['name']}"
        matched = [t for _, t in pods if selects(svc["spec"]["selector"], t["metadata"].get("labels", {}))]
        assert matched, f"{where}: selects no pod"
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for template in matched:
                assert any(container_port(c, target) for c in template["spec"]["containers"]), f"{where}: {target}"
    for monitor in find(objects, "ServiceMonitor"):
        where = f"{overlay}: ServiceMonitor/{monitor['metadata']['name']}"
        targets = [
            s
            for s in find(objects, "Service")
            if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
        ]
        assert targets, f"{where}: selects no Service"
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["path"].startswith("/")
            for svc in targets:
                assert endpoint["port"] in {p.get("name") for p in svc["spec"]["ports"]}, f"{where}: {endpoint['port']}"
    for monitor in find(objects, "PodMonitor"):
        where = f"{overlay}: PodMonitor/{monitor['metadata']['name']}"
        assert monitor["spec"]["selector"]["matchLabels"] == {"ray.io/is-ray-node": "yes"}, "KubeRay's pod label"
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            for obj in objects:
                if (obj["apiVersion"], obj["kind"]) in RAY_KINDS:
                    for group, _, template in ray_templates(obj):
                        ray_container = template["spec"]["containers"][0]
                        assert container_port(ray_container, endpoint["port"]), f"{where}: {obj['kind']}[{group}]"
    if "monitoring" in json.dumps(kustomization(K8S / "overlays" / overlay)["resources"]):
        monitored = {m["metadata"]["name"] for m in objects if (m["apiVersion"], m["kind"]) in MONITOR_KINDS}
        assert {"hyctas-controller", "hyctas-worker", "hyctas-ray"} <= monitored, overlay


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifests_set_every_setting(overlay: str) -> None:
    """Controller, migration Job, `hyctas worker` and every Ray pod get every HYCTAS_* variable."""
    objects = render(K8S / "overlays" / overlay)
    checked = 0
    for where, template in pod_templates(objects):
        container = template["spec"]["containers"][0]
        component = template["metadata"].get("labels", {}).get("app.kubernetes.io/component", "")
        if component in ("controller", "worker", "migrate") or where.startswith(("RayCluster", "RayService")):
            _check_settings(container_env(objects, container), f"{overlay}: {where}")
            checked += 1
    assert checked >= 5, f"{overlay}: controller, migrate, worker and Ray pods not all found"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifest_references_and_ports_agree(overlay: str) -> None:
    objects = render(K8S / "overlays" / overlay)
    for where, template in pod_templates(objects):
        for container in template["spec"]["containers"]:
            env = container_env(objects, container)  # resolves every ConfigMap / Secret reference or fails
            argv = list(container.get("command", [])) + list(container.get("args", []))
            for ref in re.findall(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)", " ".join(argv)):
                assert ref in env, f"{overlay}: {where}: $({ref}) is not in the container's environment"
    # controller: --port = container port `http` = Service port
    controller = command_of(objects, "Deployment", "hyctas-controller")
    (template,) = [t for w, t in pod_templates(objects) if w == "Deployment/hyctas-controller"]
    http = container_port(template["spec"]["containers"][0], "http")
    assert int(_option(controller, "--port") or 0) == http
    assert _option(controller, "--host") == "0.0.0.0"
    probes = template["spec"]["containers"][0]
    assert (
        probes["livenessProbe"]["httpGet"]["path"] == "/health"
        and probes["readinessProbe"]["httpGet"]["path"] == "/ready"
    )
    # worker: HYCTAS_WORKER_METRICS_PORT = container port `metrics`
    (worker,) = [t for w, t in pod_templates(objects) if w == "Deployment/hyctas-worker"]
    worker_container = worker["spec"]["containers"][0]
    settings = _settings_from(container_env(objects, worker_container))
    assert container_port(worker_container, "metrics") == settings.worker_metrics_port
    # HYCTAS_RAY_ADDRESS: KubeRay's head Service of the RayCluster, client port
    (cluster,) = find(objects, "RayCluster")
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    # Ray Serve of the search cluster (models of `deploy` jobs): head port 8000, Service port 8001
    serve_svc = one(objects, "Service", "hyctas-serve")
    assert selects(serve_svc["spec"]["selector"], cluster["spec"]["headGroupSpec"]["template"]["metadata"]["labels"])
    ((serve_port,),) = [[(p["port"], container_port(head, p["targetPort"]))] for p in serve_svc["spec"]["ports"]]
    assert serve_port == (8001, settings.serve_port), "Serve: HYCTAS_SERVE_PORT in the head, 8001 on the Service"
    post_start = " ".join(head["lifecycle"]["postStart"]["exec"]["command"])
    assert "--http-port=$HYCTAS_SERVE_PORT" in post_start and "--http-host=$HYCTAS_SERVE_HOST" in post_start
    (service,) = find(objects, "RayService")
    serve_head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert serve_config["http_options"]["port"] == container_port(serve_head, "serve") == settings.serve_port
    assert _host_port(settings.ray_address or "") == (
        f"{cluster['metadata']['name']}-head-svc",
        container_port(head, "client"),
    )
    # migration Job: `hyctas db upgrade --db $(HYCTAS_DATABASE_URL)`
    migrate = command_of(objects, "Job", "hyctas-migrate")
    assert migrate[:3] == ["hyctas", "db", "upgrade"] and _option(migrate, "--db") == "$(HYCTAS_DATABASE_URL)"
    # in-cluster datastores: URLs point at their Services, with their passwords
    if find(objects, "StatefulSet", "hyctas-postgres"):
        datastores = one(objects, "Secret", "hyctas-datastores")["stringData"]
        db = urlsplit(settings.database_url)
        postgres = one(objects, "Service", "hyctas-postgres")
        assert db.hostname == "hyctas-postgres" and db.port in {p["port"] for p in postgres["spec"]["ports"]}
        assert db.password == datastores["POSTGRES_PASSWORD"], f"{overlay}: secrets.env and datastores.env disagree"
        redis = urlsplit(settings.redis_url)
        redis_svc = one(objects, "Service", "hyctas-redis")
        assert redis.hostname == "hyctas-redis" and redis.port in {p["port"] for p in redis_svc["spec"]["ports"]}
        assert redis.password == datastores["REDIS_PASSWORD"], f"{overlay}: secrets.env and datastores.env disagree"
        redis_args = command_of(objects, "StatefulSet", "hyctas-redis")
        assert (
            _option(redis_args, "--appendonly") == "yes" and _option(redis_args, "--maxmemory-policy") == "noeviction"
        )


def test_no_secret_values_in_the_manifests() -> None:
    for path in K8S.rglob("*.yaml"):
        for obj in _yaml_docs(path):
            if not isinstance(obj, dict):
                continue
            assert obj.get("kind") != "Secret", f"{path}: Secrets come from the overlay's secretGenerator"
            text = json.dumps(obj)
            assert not re.search(r"(postgres(ql)?(\+\w+)?|rediss?)://[^\s\"']*:[^\s\"'@$]+@", text), (
                f"{path}: a URL with a password"
            )
            for var in re.findall(r"\{\"name\": \"([A-Z_]*(?:PASSWORD|SECRET|TOKEN)[A-Z_]*)\", \"value\"", text):
                raise AssertionError(f"{path}: {var} has a literal value (use secretKeyRef)")
    config = one(_base_objects(), "ConfigMap", "hyctas-config")["data"]
    assert not {"HYCTAS_DATABASE_URL", "HYCTAS_REDIS_URL"} & set(config), "credentials belong in the Secret"
    for example in K8S.rglob("*.env.example"):
        for key, value in _read_env_file(example).items():
            assert "CHANGE_ME" in value, f"{example}: {key} must be a placeholder"
