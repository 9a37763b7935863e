#!/usr/bin/python3
"""Adds an irot (rotation) property, and optionally imir (mirror), to the
primary item of a HEIF file (HEIC or AVIF) as a phone writes them: the
pixels stay as stored and a reader turns them. heif-enc cannot write these
properties, so tests/e2e/formats.sh makes its turned files with this.

    heif_rotate.py IN OUT QUARTER_TURNS_ANTICLOCKWISE [--mirror AXIS]

The boxes that hold the new property grow (ipco, ipma, iprp, meta), and
every item location (iloc) that points at file offsets after the meta box
moves by as much. Only what libheif and vips write is handled: meta before
the image data, iloc versions 0-2, ipma versions 0-1."""
import struct
import sys


def boxes(data, start, end):
    """(type, header start, content start, end) of each box in [start, end)."""
    out, off = [], start
    while off < end:
        size, kind = struct.unpack(">I4s", data[off:off + 8])
        head = 8
        if size == 1:
            size = struct.unpack(">Q", data[off + 8:off + 16])[0]
            head = 16
        elif size == 0:
            size = end - off
        out.append((kind.decode("latin-1"), off, off + head, off + size))
        off += size
    return out


def box(kind, content):
    return struct.pack(">I4s", 8 + len(content), kind.encode()) + content


def read_uint(data, at, n):
    return int.from_bytes(data[at:at + n], "big") if n else 0


def shifted_iloc(content, delta):
    """The iloc box's content with every file offset moved by delta."""
    c = bytearray(content)
    version = c[0]
    offset_size, length_size = c[4] >> 4, c[4] & 15
    base_size, index_size = c[5] >> 4, (c[5] & 15 if version in (1, 2) else 0)
    at = 6
    id_size = 4 if version == 2 else 2
    count = read_uint(c, at, id_size)
    at += id_size
    for _ in range(count):
        at += id_size
        method = 0
        if version in (1, 2):
            method = c[at + 1] & 15
            at += 2
        at += 2  # data reference index
        base_at = at
        at += base_size
        extents = read_uint(c, at, 2)
        at += 2
        for _ in range(extents):
            at += index_size
            if method == 0 and not base_size:
                c[at:at + offset_size] = (read_uint(c, at, offset_size) + delta).to_bytes(offset_size, "big")
            at += offset_size + length_size
        if method == 0 and base_size:
            c[base_at:base_at + base_size] = (read_uint(c, base_at, base_size) + delta).to_bytes(base_size, "big")
    return bytes(c)


def with_properties(ipco, ipma, primary, props):
    """ipco with props appended; ipma with them associated (essential) to primary."""
    first = len(boxes(ipco, 0, len(ipco))) + 1
    new_ipco = ipco + b"".join(props)
    m = bytearray(ipma)
    version, wide = m[0], m[3] & 1
    entries = read_uint(m, 4, 4)
    at, id_size, each = 8, (2 if version == 0 else 4), (2 if wide else 1)
    for _ in range(entries):
        item = read_uint(m, at, id_size)
        n = m[at + id_size]
        if item == primary:
            added = b"".join(((0x8000 | (first + i)).to_bytes(2, "big") if wide else bytes([0x80 | (first + i)]))
                             for i in range(len(props)))
            m[at + id_size] = n + len(props)
            end = at + id_size + 1 + n * each
            return new_ipco, bytes(m[:end]) + added + bytes(m[end:])
        at += id_size + 1 + n * each
    raise SystemExit("the primary item has no entry in ipma")


def main():
    src, dst, turns = sys.argv[1], sys.argv[2], int(sys.argv[3])
    mirror = int(sys.argv[5]) if len(sys.argv) > 5 and sys.argv[4] == "--mirror" else None
    data = open(src, "rb").read()
    top = boxes(data, 0, len(data))
    kind, meta_at, meta_start, meta_end = next(b for b in top if b[0] == "meta")
    children = boxes(data, meta_start + 4, meta_end)
    pitm = next(b for b in children if b[0] == "pitm")
    primary = read_uint(data, pitm[2] + 4, 2 if data[pitm[2]] == 0 else 4)
    props = [box("irot", bytes([turns & 3]))]
    if mirror is not None:
        props.append(box("imir", bytes([mirror & 1])))
    # the new iprp first: how much it grows moves everything after meta
    iprp = next(b for b in children if b[0] == "iprp")
    inner = boxes(data, iprp[2], iprp[3])
    ipco = next(data[b[2]:b[3]] for b in inner if b[0] == "ipco")
    ipma = next(data[b[2]:b[3]] for b in inner if b[0] == "ipma")
    ipco, ipma = with_properties(ipco, ipma, primary, props)
    rest = b"".join(data[b[1]:b[3]] for b in inner if b[0] not in ("ipco", "ipma"))
    new_iprp = box("iprp", box("ipco", ipco) + box("ipma", ipma) + rest)
    grown = len(new_iprp) - (iprp[3] - iprp[1])
    body = b""
    for kind, at, start, end in children:
        if kind == "iprp":
            body += new_iprp
        elif kind == "iloc":
            body += box("iloc", shifted_iloc(data[start:end], grown))
        else:
            body += data[at:end]
    meta = box("meta", data[meta_start:meta_start + 4] + body)
    out = data[:meta_at] + meta + data[meta_end:]
    assert len(out) == len(data) + grown
    open(dst, "wb").write(out)


if __name__ == "__main__":
    main()
