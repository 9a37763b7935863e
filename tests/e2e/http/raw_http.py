"""Shared by the raw-socket clients beside it (trickle_post.py, upload_budget.py):
reading a server's whole reply off a socket the request asked to close."""


def read_reply(sock):
    """Reads until the server closes; returns (status, raw reply). The status
    is 0 when the reply has no status line."""
    resp = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        resp += chunk
    line = resp.split(b"\r\n", 1)[0].split(b" ")
    return (int(line[1]) if len(line) > 1 and line[1].isdigit() else 0), resp
