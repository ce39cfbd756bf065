"""Rebuilding the aggregates into a new generation and switching to it: after Redis lost
them (``loss_watch``), on a layout upgrade, or on an operator's ``make replay``."""
