#!/usr/bin/python3
"""Writes a tiny synthetic data set in the MNIST file format (raw IDX) into DIR: 160 training
and 32 test images of 12x12, class y = a bright bar in row y. For scripts that need a run that
takes seconds (crash-test.sh, tsan-check.sh). Usage: synthetic_mnist.py DIR"""
import os
import random
import struct
import sys

d = sys.argv[1]
os.makedirs(d, exist_ok=True)
rng = random.Random(1)
for prefix, n in (("train", 160), ("t10k", 32)):
    img = bytearray(struct.pack(">IIII", 0x803, n, 12, 12))
    lab = bytearray(struct.pack(">II", 0x801, n))
    for i in range(n):
        y = i % 10
        px = [rng.randrange(60) for _ in range(144)]
        for c in range(1, 11):
            px[y * 12 + c] = 230
        img += bytes(px)
        lab.append(y)
    with open(os.path.join(d, prefix + "-images-idx3-ubyte"), "wb") as f:
        f.write(img)
    with open(os.path.join(d, prefix + "-labels-idx1-ubyte"), "wb") as f:
        f.write(lab)
