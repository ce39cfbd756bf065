"""Operator commands: the site registry and the stats tokens (``python -m admin --help``)."""
