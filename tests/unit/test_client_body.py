"""client/blocking.py: how `s3feed put` sends a body it cannot size (a pipe,
a socket): HTTP/1.1 chunks, read by a real HTTP parser (httptools)."""

from __future__ import annotations

import os
import socket
import threading

import httptools
import pytest

from s3feed.client.body import send_body

MiB = 1024 * 1024


class _Request:
    def __init__(self) -> None:
        self.body = bytearray()
        self.complete = False

    def on_body(self, data: bytes) -> None:
        self.body += data

    def on_message_complete(self) -> None:
        self.complete = True


def _send_and_parse(make_source: str, data: bytes) -> tuple[bytes, list[int]]:
    if make_source == "pipe":
        src_read, src_write = os.pipe()
    else:  # a socket as stdin: not a pipe, so read and sent by the read loop
        a, b = socket.socketpair()
        src_read, src_write = os.dup(a.fileno()), os.dup(b.fileno())
        a.close()
        b.close()

    def produce() -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(src_write, view[: 256 * 1024]) :]
        os.close(src_write)

    out, peer = socket.socketpair()
    request = _Request()
    parser = httptools.HttpRequestParser(request)
    parser.feed_data(b"PUT /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")

    def consume() -> None:
        while chunk := peer.recv(MiB):
            parser.feed_data(chunk)

    progress: list[int] = []
    threads = [threading.Thread(target=produce), threading.Thread(target=consume)]
    for t in threads:
        t.start()
    try:
        send_body(out, src_read, None, progress.append)
        out.shutdown(socket.SHUT_WR)
    finally:
        for t in threads:
            t.join(timeout=60)
        os.close(src_read)
        out.close()
        peer.close()
    assert request.complete  # the last chunk (0) ended the message
    return bytes(request.body), progress


@pytest.mark.parametrize("source", ["pipe", "socket"])
@pytest.mark.parametrize("size", [0, 1, MiB - 1, MiB + 1, 5 * MiB + 7])
def test_an_unsized_body_arrives_whole_as_chunks(source: str, size: int) -> None:
    data = os.urandom(size)
    body, progress = _send_and_parse(source, data)
    assert body == data
    assert (progress[-1] if progress else 0) == size
    assert progress == sorted(progress)
