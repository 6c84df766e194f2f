"""Project tooling run from the Makefile (not part of the installed package)."""
