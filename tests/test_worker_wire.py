"""The worker socket's client: a connection the worker closes before the request is sent whole is
tried once more, never a request the worker received; a worker that keeps closing is one clear error."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from federated.runtime.messages import WireError, accept_authenticated, call, recv_frame, send_frame

TOKEN = b"t" * 32


def _serve(path: Path, drop_first: int, handled: list[dict]) -> threading.Thread:
    """A worker that closes its first `drop_first` connections right after sending the nonce, then
    answers each request with its header's `n` doubled."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    server.settimeout(10)

    def loop() -> None:
        with server:
            for i in range(drop_first + 1):
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    return
                with conn:
                    if i < drop_first:
                        conn.sendall(b"n" * 32)  # a nonce, then gone: the caller's proof meets a closed socket
                        conn.shutdown(socket.SHUT_RDWR)
                        continue
                    assert accept_authenticated(conn, TOKEN)
                    header, arrays = recv_frame(conn)
                    handled.append(header)
                    send_frame(conn, {"ok": True, "n": header["n"] * 2}, {"x": arrays["x"] * 2})

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def test_a_connection_closed_before_the_request_is_retried_once(tmp_path: Path) -> None:
    handled: list[dict] = []
    thread = _serve(tmp_path / "w.sock", drop_first=1, handled=handled)
    reply, arrays = call(str(tmp_path / "w.sock"), TOKEN, {"n": 21}, {"x": np.arange(3.0)}, timeout=10)
    thread.join(5)
    assert reply == {"ok": True, "n": 42}
    assert arrays["x"].tolist() == [0.0, 2.0, 4.0]
    assert handled == [{"n": 21}]  # the worker acted on the request exactly once


def test_a_worker_that_keeps_closing_gives_one_clear_error(tmp_path: Path) -> None:
    handled: list[dict] = []
    thread = _serve(tmp_path / "w.sock", drop_first=2, handled=handled)
    with pytest.raises(WireError, match=r"training worker at .*w\.sock failed \(.*\) while the request was sent"):
        call(str(tmp_path / "w.sock"), TOKEN, {"n": 1}, {"x": np.zeros(1)}, timeout=10)
    thread.join(0.1)
    assert handled == []
