"""Parley's shared library: what every service needs, written once.

- `parley.settings`  pydantic-settings base classes (every variable is PARLEY_*)
- `parley.logs`      one log format for every process
- `parley.pcm`       PCM16 conversion, resampling, level checks
- `parley.registry`  NATS micro-service registration and the instance record
- `parley.streams`   reading client audio streams with their end marker
- `parley.server`    the gRPC service bootstrap (health, reflection, metrics,
                     NATS registration, graceful shutdown)
- `parley.<capability>.v1`  generated protobuf/gRPC stubs (`make proto`)
"""

__version__ = "0.1.0"
