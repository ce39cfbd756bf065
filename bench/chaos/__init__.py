"""``make chaos``: the pipeline under real faults, with every acknowledged event accounted for.

A steady open-loop load runs through NGINX while faults from a catalogue (``faults``) are
injected one after another into a private stack; the runner (``runner``) times the recovery
of each, and the final check (``final_check`` reading, ``exact`` comparing) proves that every
acknowledged event is in MongoDB once and in every Redis aggregate once. ``python -m
bench.chaos --help`` for the options; the README's "Reliability" section for the definitions.
"""
