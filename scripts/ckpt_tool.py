#!/usr/bin/python3
"""Checkpoint checks for scripts/crash-test.sh, reading safetensors by hand (standard library).

  ckpt_tool.py check FILE...   every FILE is a complete jem checkpoint: header length, JSON,
                               metadata format, every tensor's byte range inside the file and
                               consistent with its dtype and shape. Exit 1 naming the first bad one.
  ckpt_tool.py compare A B     A and B hold the same tensor names, dtypes, shapes and bytes (bit
                               for bit); exit 1 listing the tensors that differ.
"""
import json
import struct
import sys

SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
         "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}


def load(path):
    with open(path, "rb") as f:
        b = f.read()
    if len(b) < 8:
        raise ValueError("shorter than 8 bytes")
    (n,) = struct.unpack("<Q", b[:8])
    if n > len(b) - 8:
        raise ValueError("header length %d beyond the file (%d bytes)" % (n, len(b)))
    header = json.loads(b[8:8 + n])
    meta = header.pop("__metadata__", {})
    if meta.get("format") != "jem-checkpoint-1":
        raise ValueError("metadata format %r" % meta.get("format"))
    data = b[8 + n:]
    tensors = {}
    for name, t in header.items():
        begin, end = t["data_offsets"]
        count = 1
        for d in t["shape"]:
            count *= d
        if not (0 <= begin <= end <= len(data)) or end - begin != count * SIZES[t["dtype"]]:
            raise ValueError("tensor %s: bad data_offsets %r" % (name, t["data_offsets"]))
        tensors[name] = (t["dtype"], t["shape"], data[begin:end])
    return meta, tensors


def main(argv):
    if len(argv) >= 2 and argv[0] == "check":
        for p in argv[1:]:
            try:
                load(p)
            except Exception as e:  # any failure to parse is the finding
                print("unreadable checkpoint %s: %s" % (p, e))
                return 1
        return 0
    if len(argv) == 3 and argv[0] == "compare":
        (_, a), (_, b) = load(argv[1]), load(argv[2])
        bad = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if bad:
            print("%d of %d tensors differ: %s" % (len(bad), len(a), ", ".join(bad[:10])))
            return 1
        print("identical: %d tensors, %d bytes" % (len(a), sum(len(v[2]) for v in a.values())))
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
