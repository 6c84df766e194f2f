"""Datasets, transforms and the built-in synthetic street-scene benchmark."""
