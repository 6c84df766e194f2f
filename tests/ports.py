"""Ports for servers a test starts in another process, and a readiness check.

The ports come from :mod:`services.ports` (below the kernel's ephemeral range, so that a Ray
head's agents cannot take one between the test picking it and the server binding it).
"""

from __future__ import annotations

from services.ports import free_port

__all__ = ["controller_ready", "free_port"]


def controller_ready(base: str) -> bool:
    """Whether the HyCTAS controller at ``base`` answers ``/ready`` as ready.

    The body is checked, not only the status: any server on a reused port answers 200 to a GET.
    """
    import httpx

    try:
        r = httpx.get(base + "/ready", timeout=2)
        return r.status_code == 200 and r.json().get("status") == "ready"
    except (httpx.HTTPError, ValueError, AttributeError):
        return False
