"""Tests of the services (storage, ...)."""
