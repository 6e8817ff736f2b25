"""async-ml-inference: a WebSocket front for jobs run by Ray actors."""

__version__ = "0.1.0"
