"""A client of async-ml-inference's WebSocket protocol v1: `ami.Client` for programs, `ami` for shells."""

from ami.client import Client, ConnectionFailed, Error, Progress, Refused, Result

__all__ = ["Client", "ConnectionFailed", "Error", "Progress", "Refused", "Result"]
