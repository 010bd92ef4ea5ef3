"""The worker socket: a request whose last array is empty is delivered, answered and read even when
the worker closes the connection the moment it has answered (a zero-length send after the worker
closed used to fail with BrokenPipe, after the worker had acted on the request)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np

from federated.runtime import messages
from federated.runtime.messages import accept_authenticated, call, recv_frame, send_frame

TOKEN = b"t" * 32


def test_a_request_ending_in_an_empty_array_gets_its_answer(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "w.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    handled: list[dict] = []

    def worker() -> None:
        conn, _ = server.accept()
        with conn:
            assert accept_authenticated(conn, TOKEN)
            header, arrays = recv_frame(conn)
            handled.append(header)
            send_frame(conn, {"ok": True, "n": header["n"] * 2})
        server.close()

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    real_sendall = socket.socket.sendall

    def slow_sendall(sock: socket.socket, data: bytes) -> None:
        real_sendall(sock, data)
        time.sleep(0.2)  # the worker reads, answers and closes before the caller's next send

    monkeypatch.setattr(messages.socket.socket, "sendall", slow_sendall)
    reply, arrays = call(str(path), TOKEN, {"n": 21}, {"payload": np.zeros(0, dtype=np.uint8)}, timeout=10)
    thread.join(5)
    assert reply == {"ok": True, "n": 42} and arrays == {}
    assert handled == [{"n": 21}]
