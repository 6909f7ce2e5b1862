#!/usr/bin/python3
"""Writes the small seed inputs of fuzz/corpus/<target>/ (standard library only).

Usage: fuzz/make_seeds.py CORPUS_DIR   (scripts/fuzz.sh --seeds runs it; the checkpoint seed
comes from the fuzz_checkpoint binary itself, see fuzz_checkpoint.cpp). Seeds are valid files
in each format, small enough that the fuzzer mutates structure rather than pixels.
"""
import gzip
import json
import os
import struct
import sys
import zlib


def put(corpus, target, name, data):
    d = os.path.join(corpus, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def idx(corpus):
    n, h, w = 3, 2, 2
    images = struct.pack(">IIII", 0x803, n, h, w) + bytes(range(n * h * w))
    labels = struct.pack(">II", 0x801, n) + bytes([0, 9, 4])
    # fuzz_idx input: u16 little-endian labels length, the labels file, the images file.
    put(corpus, "idx", "raw", struct.pack("<H", len(labels)) + labels + images)
    gl, gi = gzip.compress(labels, mtime=0), gzip.compress(images, mtime=0)
    put(corpus, "idx", "gzip", struct.pack("<H", len(gl)) + gl + gi)


def cifar(corpus):
    rec10 = bytes([3]) + bytes(i % 251 for i in range(3072))
    put(corpus, "cifar", "two_records_cifar10", rec10 * 2)
    rec100 = bytes([5, 42]) + bytes(i % 13 for i in range(3072))
    put(corpus, "cifar", "one_record_cifar100", rec100)


def mat5_element(mtype, payload):
    pad = (8 - len(payload) % 8) % 8
    return struct.pack("<II", mtype, len(payload)) + payload + b"\0" * pad


def mat5_matrix(name, mx_class, dims, mtype, data):
    body = mat5_element(6, struct.pack("<II", mx_class, 0))  # array flags: class
    body += mat5_element(5, struct.pack("<%di" % len(dims), *dims))  # dimensions
    body += mat5_element(1, name.encode())  # array name
    body += mat5_element(mtype, data)  # real part
    return mat5_element(14, body)  # miMATRIX


def mat5_file(elements):
    text = b"MATLAB 5.0 MAT-file, written by jem fuzz/make_seeds.py"
    header = text.ljust(116, b" ") + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"
    return header + b"".join(elements)


def svhn(corpus):
    H, W, N = 2, 2, 2
    x = mat5_matrix("X", 9, [H, W, 3, N], 2, bytes(range(H * W * 3 * N)))  # uint8 class/type
    y = mat5_matrix("y", 6, [N, 1], 9, struct.pack("<2d", 10.0, 3.0))  # double class/type
    put(corpus, "svhn", "v5_plain.mat", mat5_file([x, y]))
    z = zlib.compress(x)  # miCOMPRESSED: not padded to 8 bytes
    put(corpus, "svhn", "v5_zlib.mat", mat5_file([struct.pack("<II", 15, len(z)) + z, y]))


def safetensors(corpus):
    def st(tensors, meta=None):
        header, data = {}, b""
        if meta:
            header["__metadata__"] = meta
        for name, dtype, shape, raw in tensors:
            header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
            data += raw
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * ((8 - (8 + len(text)) % 8) % 8)
        return struct.pack("<Q", len(text)) + text + data

    put(corpus, "safetensors", "mixed", st([
        ("w", "F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4)),
        ("d", "F64", [1], struct.pack("<d", 0.5)),
        ("n", "I64", [], struct.pack("<q", 7)),
        ("i", "I32", [3], struct.pack("<3i", 1, -2, 3)),
        ("b", "U8", [0, 5], b""),
        ("h", "BF16", [2], b"\0\0\0\0"),
    ], {"format": "x", "k": "v"}))
    put(corpus, "safetensors", "empty", st([]))


def train_config(corpus):
    put(corpus, "train_config", "fashion_tiny.toml", b"""# tiny run
dataset = "fashion-mnist"
depth = 10
width = 1
batch_size = 8
decay_epochs = [1, 2]
augment = false
lr = 3e-4
max_iters = 5
out = "runs/x"
""")
    put(corpus, "train_config", "sections.toml", b"""# rejected: the file is flat
[run]
seed = 7
device = "cpu"
[sampler]
sgld_steps = 0
clamp = true
""")
    put(corpus, "train_config", "flat.toml", b"""seed = 7
device = "cpu"
sgld_steps = 0
clamp = true
class_cond_buffer = true
w_pxy = 1.0
optimizer = "sgd"
guard = false
""")


if __name__ == "__main__":
    corpus = sys.argv[1]
    idx(corpus)
    cifar(corpus)
    svhn(corpus)
    safetensors(corpus)
    train_config(corpus)
