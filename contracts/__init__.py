"""Everything two services must agree on, and nothing that does I/O.

The event schema and codec, validation, topic names, the Redis key layout, MongoDB
collection and index names, and the typed settings read from the environment. Services
import this package; they never import each other.
"""
