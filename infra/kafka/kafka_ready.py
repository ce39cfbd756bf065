#!/usr/bin/env python3
"""Stdlib-only readiness probe for the local Kafka broker.

Sends ApiVersions(v0) and Metadata(v1) on one TCP connection and succeeds when
both answer and the metadata lists at least one broker.

  python3 infra/kafka/kafka_ready.py [--host 127.0.0.1] [--port 19092] [--timeout 60]

Exit 0 when ready, 1 on timeout.
"""
import argparse
import socket
import struct
import sys
import time

CLIENT_ID = b"kafka-ready"


def _request(sock, api_key, api_version, corr_id, body=b""):
    header = struct.pack(">hhih", api_key, api_version, corr_id, len(CLIENT_ID)) + CLIENT_ID
    msg = header + body
    sock.sendall(struct.pack(">i", len(msg)) + msg)
    size = struct.unpack(">i", _recv_exact(sock, 4))[0]
    resp = _recv_exact(sock, size)
    if struct.unpack(">i", resp[:4])[0] != corr_id:
        raise OSError("correlation id mismatch")
    return resp[4:]


def _recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed")
        buf += chunk
    return buf


def probe(host, port, timeout=3.0):
    """Return number of brokers in metadata; raise on any failure."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        resp = _request(s, 18, 0, 1)  # ApiVersions v0
        err = struct.unpack(">h", resp[:2])[0]
        if err != 0:
            raise OSError(f"ApiVersions error {err}")
        resp = _request(s, 3, 1, 2, struct.pack(">i", -1))  # Metadata v1, all topics
        return struct.unpack(">i", resp[:4])[0]  # brokers array length


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=19092)
    ap.add_argument("--timeout", type=float, default=60.0)
    a = ap.parse_args()
    deadline = time.monotonic() + a.timeout
    last = None
    while time.monotonic() < deadline:
        try:
            if probe(a.host, a.port) >= 1:
                print(f"kafka ready on {a.host}:{a.port}")
                return 0
        except (OSError, struct.error) as e:
            last = e
        time.sleep(0.2)
    print(f"kafka not ready on {a.host}:{a.port} after {a.timeout:.0f}s ({last})",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
