"""Device classes: which kind of device a node is, and which class a search times latency on.

Ray-free (the controller uses it too); the timing slots that use it live in
:mod:`services.worker.devices`. Each node of the cluster belongs to one **device class**:

- ``hyctas_device:<class>`` among its Ray resources (a custom label: ``ray start
  --resources='{"hyctas_device:xeon-6248": 1}'``, or a KubeRay group's ``rayStartParams``) names it;
- else Ray's ``accelerator_type:<type>`` resource (Ray sets it on GPU nodes: ``V100``, ``A100``,
  ...) names it;
- else the node is ``cpu``.

A search names its ``target_device``; with none, a cluster of one class uses that class, and a
mixed cluster is an error (:func:`resolve_target`).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "ACCELERATOR_PREFIX",
    "CPU_CLASS",
    "DEVICE_CLASS_PATTERN",
    "LABEL_PREFIX",
    "MixedCluster",
    "device_classes",
    "node_device_class",
    "resolve_target",
]

CPU_CLASS = "cpu"
LABEL_PREFIX = "hyctas_device:"
ACCELERATOR_PREFIX = "accelerator_type:"
DEVICE_CLASS_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


class MixedCluster(ValueError):
    """A search named no device class and the cluster has several (one line, for a 422)."""


def node_device_class(resources: dict[str, float]) -> str:
    """The device class of a node with these Ray resources (see the module docstring)."""
    for prefix in (LABEL_PREFIX, ACCELERATOR_PREFIX):
        names = sorted(k.removeprefix(prefix) for k in resources if k.startswith(prefix))
        if names:
            return names[0]
    return CPU_CLASS


def device_classes(nodes: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Device class -> ids of the alive nodes of that class, from ``ray.nodes()``-style records."""
    out: dict[str, list[str]] = {}
    for node in nodes:
        if node.get("Alive"):
            out.setdefault(node_device_class(node.get("Resources", {})), []).append(node["NodeID"])
    return out


def resolve_target(requested: str | None, classes: dict[str, Any]) -> str:
    """The device class a search times on: the one asked for, else the cluster's only class.

    Raises:
        MixedCluster: none asked and the cluster has several classes.
        ValueError: the name is not a device class name.
    """
    if requested:
        if not re.fullmatch(DEVICE_CLASS_PATTERN, requested):
            raise ValueError(f"target_device {requested!r}: letters, digits, '_', '.', '-' (1-64)")
        return requested
    if len(classes) > 1:
        names = ", ".join(sorted(classes))
        raise MixedCluster(f"the cluster has several device classes ({names}): name the search's target_device")
    return next(iter(classes), CPU_CLASS)
