#!/usr/bin/python3
"""The server's budget for request bodies in flight, from the outside.

  upload_budget.py PORT IMAGE MAX_UPLOAD_MB

The server runs with --max-upload-mb MAX_UPLOAD_MB, so its budget is 4 x the
cap, at least 256 MiB. Connections that declare bodies just under the cap and
send only their headers hold the budget (a body's bytes are reserved when its
headers arrive). With them holding it:
  - a declared body larger than what is left gets 429 at once;
  - one that fits is served;
  - a chunked body, whose size is unknown, is reserved as the whole cap and so
    gets 429 even when small.
When the holders close, the budget is back: the chunked upload is served.
Prints one line per check and exits 1 on any failure.
"""
import socket
import sys
import time

from raw_http import read_reply

fails = 0


def check(ok, what):
    global fails
    print(("ok: " if ok else "FAIL: ") + what)
    fails += 0 if ok else 1


def post(port, body=None, declared=None, chunked=False, send_body=True):
    """Sends a POST /api/search of an image/png body; returns the socket."""
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    head = "POST /api/search?k=1 HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nConnection: close\r\n"
    head += "Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {declared}\r\n"
    s.sendall((head + "\r\n").encode())
    if send_body and chunked:
        s.sendall(b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
    elif send_body:
        s.sendall(body)
    return s


def status_of(s):
    try:
        status, resp = read_reply(s)
    except OSError:
        status, resp = 0, b""
    s.close()
    return status, resp[-160:]


def main(argv):
    port, image, cap_mb = int(argv[1]), argv[2], int(argv[3])
    cap = cap_mb << 20
    budget = max(256 << 20, 4 * cap)
    with open(image, "rb") as f:
        png = f.read()
    each = cap - (1 << 20)
    holders = [post(port, declared=each, send_body=False) for _ in range(budget // each)]
    time.sleep(1.0)  # the server reserves them as their headers arrive
    left = budget - len(holders) * each
    assert len(png) <= left < cap, (len(png), left, cap)
    status, tail = status_of(post(port, declared=left + 1, send_body=False))
    check(status == 429, f"{len(holders)} holders leave {left >> 10} KiB: a body declaring 1 byte more gets 429 "
          f"({status})")
    check(b"too many uploads" in tail, f"the 429 says why: {tail!r}")
    status, tail = status_of(post(port, body=png, declared=len(png)))
    check(status == 200, f"a body that fits what is left is served ({status})")
    status, tail = status_of(post(port, body=png, chunked=True))
    check(status == 429, f"a small chunked body is reserved as the whole cap: 429 ({status})")
    for h in holders:
        h.close()
    time.sleep(1.0)
    status, tail = status_of(post(port, body=png, chunked=True))
    check(status == 200, f"the chunked body once the holders have closed ({status} {tail!r})")
    status, tail = status_of(post(port, body=png, declared=len(png)))
    check(status == 200, f"a declared body once the holders have closed ({status})")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
