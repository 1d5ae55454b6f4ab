"""streamer: Kafka monitoring events (Avro) routed into incident.io alert events.

Events are delivered with per-key ordering and rate limits, and a Kafka offset is
committed only after everything before it reached a terminal state (accepted by
incident.io, dropped by the rules on purpose, or dead-lettered).
"""

__version__ = "0.1.0"
