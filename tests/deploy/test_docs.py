"""docs/deploy.md: its commands and the files it names exist."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.deploy.common import DOCS, K8S, OVERLAYS, ROOT
from tests.deploy.kustomize import find, pod_templates, render


def test_deploy_docs_cover_the_procedures() -> None:
    text = DOCS.read_text()
    for needle in (
        "cp .env.example .env",
        "docker compose up -d",
        "--scale ray-worker=",
        "ray start --address=",
        "workerGroupSpecs",
        "kubectl apply -k deploy/k8s/overlays/",
        "hyctas apikey create --user",
        "pg_dump",
        "pg_restore",
        "HYCTAS_LEASE_S",
    ):
        assert needle in text, f"docs/deploy.md does not cover {needle!r}"
    for section in ("Bring the stack up", "Add GPU workers", "Watch", "Upgrade", "Back up PostgreSQL"):
        assert re.search(rf"^#+ .*{section}", text, flags=re.M | re.I), f"docs/deploy.md: no section {section!r}"
    for path in re.findall(r"`((?:docker|deploy|docs|tests)/[\w./-]+|\.env\.example|docker-compose\.yml)`", text):
        assert (ROOT / path).exists(), f"docs/deploy.md names {path}, which does not exist"


# -- network policies ---------------------------------------------------------------------------
def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions In / NotIn / Exists / DoesNotExist)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _ingress_allowed(objects: tuple[dict[str, Any], ...], src: dict[str, str], dst: dict[str, str], port: int) -> bool:
    """NetworkPolicy ingress semantics within one namespace: open unless a policy selects the pod;
    then allowed when some rule admits the source (no ``from``: anyone) on the port (no ``ports``: all)."""
    policies = [p for p in find(objects, "NetworkPolicy") if _selects(p["spec"]["podSelector"], dst)]
    if not policies:
        return True
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from")
            from_ok = not peers or any("podSelector" in p and _selects(p["podSelector"], src) for p in peers)
            ports = rule.get("ports")
            port_ok = not ports or any(int(p["port"]) == port for p in ports)
            if from_ok and port_ok:
                return True
    return False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_fence_ray_and_the_datastores(overlay: str) -> None:
    """The Ray dashboard / client reach only the controller, the workers and Ray itself; PostgreSQL
    and Redis only the service's pods; the service still reaches everything it needs."""
    objects = render(K8S / "overlays" / overlay)
    pods = {where: t["metadata"]["labels"] for where, t in pod_templates(objects)}
    component = {where: labels.get("app.kubernetes.io/component") for where, labels in pods.items()}
    heads = [w for w, c in component.items() if c in ("ray-head", "serve-head")]
    assert heads, f"{overlay}: no Ray head pods"
    stranger = {"app": "something-else"}  # any other pod of the cluster
    trusted = {"controller", "worker", "ray-head", "ray-worker", "serve-head", "serve-worker"}
    for head in heads:
        for port in (8265, 10001, 6379):  # dashboard (Jobs API), client, GCS
            assert not _ingress_allowed(objects, stranger, pods[head], port), f"{overlay}: {head}:{port} is open"
            for src, labels in pods.items():
                allowed = _ingress_allowed(objects, labels, pods[head], port)
                if port in (8265, 10001):
                    assert allowed == (component[src] in trusted), f"{overlay}: {src} -> {head}:{port}"
        assert _ingress_allowed(objects, stranger, pods[head], 8000), f"{overlay}: Serve HTTP must stay reachable"
    stores = [w for w, c in component.items() if c in ("postgres", "redis")]
    for store in stores:
        port = 5432 if component[store] == "postgres" else 6379
        assert not _ingress_allowed(objects, stranger, pods[store], port), f"{overlay}: {store} is open"
        for src in ("Deployment/hyctas-controller", "Deployment/hyctas-worker"):
            if src in pods:
                assert _ingress_allowed(objects, pods[src], pods[store], port), f"{overlay}: {src} -> {store}"
        for src, labels in pods.items():
            assert _ingress_allowed(objects, labels, pods[store], port), f"{overlay}: {src} -> {store} blocked"
