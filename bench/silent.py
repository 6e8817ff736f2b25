"""A WebSocket client that sends but does not read: the slow consumer the outbox limit is for.

It runs websockets' sans-I/O protocol over a plain socket with a tiny receive buffer, so nothing on
the client side soaks up what the server sends; only when told does it read, to see how it was closed.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri


class SilentClient:
    def __init__(self, url: str, receive_buffer: int = 4096) -> None:
        parts = urlsplit(url)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)  # before connect: it sticks
        self.sock.settimeout(30)
        self.sock.connect((parts.hostname or "127.0.0.1", parts.port or 80))
        self.protocol = ClientProtocol(parse_uri(url), max_size=None)
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        while self.protocol.state is State.CONNECTING:
            data = self.sock.recv(4096)
            if not data:
                raise ConnectionError("the server closed the connection during the handshake")
            self.protocol.receive_data(data)
        self.protocol.events_received()  # the handshake response
        if self.protocol.handshake_exc is not None:
            raise self.protocol.handshake_exc

    def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.sock.sendall(data)

    def send(self, text: str) -> None:
        self.protocol.send_text(text.encode())
        self._flush()

    def read_until_closed(self, timeout: float = 60) -> tuple[int, Close | None]:
        """Read everything the server sent until it closes; the count of text frames and its close frame."""
        self.sock.settimeout(timeout)
        frames = 0
        try:
            while True:
                data = self.sock.recv(1 << 20)
                if not data:
                    self.protocol.receive_eof()
                    break
                self.protocol.receive_data(data)
                frames += sum(1 for event in self.protocol.events_received()
                              if isinstance(event, Frame) and event.opcode is Opcode.TEXT)
                self._flush()  # the answer to the close frame
                if self.protocol.close_rcvd is not None:
                    break
        except (ConnectionResetError, TimeoutError):
            pass
        return frames, self.protocol.close_rcvd

    def close(self) -> None:
        self.sock.close()
