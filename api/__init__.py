"""Mighty's outward interfaces: the `mighty` command line (api.cli) and, later, the REST service."""
