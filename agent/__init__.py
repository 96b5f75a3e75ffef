"""edge-agent: camera inference with hot-swapped models, MQTT control and fleet telemetry."""

__version__ = "0.1.0"
