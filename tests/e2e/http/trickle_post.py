#!/usr/bin/python3
"""POST a multipart form to the server over a raw socket, its text fields a few
bytes at a time (TCP_NODELAY), so that the server's form parser receives each
field in pieces: libmicrohttpd then opens a field with an empty piece, or
splits its value, wherever a read ends.

  trickle_post.py PORT PATH TOKEN IMAGE FIELDS_JSON [PIECE]

FIELDS_JSON is a list of [name, value] pairs sent before the image part, in
order; PIECE the bytes per send of the text parts (default 7). Prints the
status code, a space and the response body.
"""
import json
import socket
import sys
import time

from raw_http import read_reply


def main(argv):
    port, path, token, image = int(argv[1]), argv[2], argv[3], argv[4]
    fields = json.loads(argv[5])
    piece = int(argv[6]) if len(argv) > 6 else 7
    bnd = "trickleboundary42"
    parts = []  # (bytes, trickled)
    for name, value in fields:
        parts.append((f'--{bnd}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode(), True))
        parts.append((value.encode() + b"\r\n", True))
    with open(image, "rb") as f:
        img = f.read()
    parts.append((f'--{bnd}\r\nContent-Disposition: form-data; name="image"; filename="t.jpg"\r\n'
                  f'Content-Type: image/jpeg\r\n\r\n'.encode(), False))
    parts.append((img + b"\r\n", False))
    parts.append((f"--{bnd}--\r\n".encode(), False))
    length = sum(len(p) for p, _ in parts)
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: multipart/form-data; boundary={bnd}\r\nContent-Length: {length}\r\n"
            f"Connection: close\r\n\r\n").encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(head)
    for p, trickled in parts:
        step = piece if trickled else len(p)
        for i in range(0, len(p), step):
            s.sendall(p[i:i + step])
            if trickled:
                time.sleep(0.002)
    status, resp = read_reply(s)
    print(status, resp.partition(b"\r\n\r\n")[2].decode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
