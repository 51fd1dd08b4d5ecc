"""A real local S3 server for the tests: moto's standalone server behind a TCP proxy that can go down and come back.

The proxy is what the clients talk to. `down()` closes its port and cuts every open connection, as a stopped
server does, while moto keeps its buckets, so `up()` is a restarted server with its data (moto itself
holds objects in memory only). `deny = True` answers every request with S3's 403 AccessDenied, as a store does
to credentials without rights on the bucket.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

DENIED = (b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nConnection: close\r\nContent-Length: %d\r\n\r\n")
DENIED_BODY = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code>"
               b"<Message>Access Denied</Message></Error>")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 60) -> None:
    t = time.time()
    while time.time() - t < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the S3 server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


class S3Server:
    """moto on a private port, the proxy on `port`; `endpoint` is the URL clients use."""

    def __init__(self, log_path: str):
        self.moto_port, self.port = _free_port(), _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.direct = f"http://127.0.0.1:{self.moto_port}"  # for the tests' own checks, past the proxy
        self.deny = False
        self._log = open(log_path, "wb")
        self._proc: subprocess.Popen | None = None
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> "S3Server":
        self._proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                       str(self.moto_port)], stdout=self._log, stderr=subprocess.STDOUT,
                                      env={**os.environ, "MOTO_CALL_RESET_API": "false"}, start_new_session=True)
        _wait_port(self.moto_port, self._proc)
        self.up()
        return self

    def stop(self) -> None:
        self.down()
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=20)
        self._log.close()

    def up(self) -> None:
        """Listen again on the same port."""
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def down(self) -> None:
        """Stop listening and cut every open connection."""
        ls, self._listener = self._listener, None
        if ls is not None:
            try:
                ls.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            ls.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return  # down()
            if self.deny:
                threading.Thread(target=self._deny, args=(client,), daemon=True).start()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.moto_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _deny(self, client: socket.socket) -> None:
        try:
            client.settimeout(5)
            client.recv(65536)
            client.sendall(DENIED % len(DENIED_BODY) + DENIED_BODY)
        except OSError:
            pass
        finally:
            client.close()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)
