"""The FastAPI controller: REST API, server-sent events, health and metrics."""
