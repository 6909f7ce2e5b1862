#!/usr/bin/python3
"""Write a small random JEM checkpoint in the official PyTorch layout, plus reference logits.

    /usr/bin/python3 tools/make_official_test_checkpoint.py OUT.pt OUT_REF.npz \
        --depth 10 --width 1 --channels 1 --image_size 8 --classes 10 [--seed 0] [--n 16]

With --convert OUT.safetensors, also runs tools/convert_official_checkpoint.py on OUT.pt.

OUT.pt: torch.save({"model_state_dict": ..., "replay_buffer": ...}) as the official training
script writes it. OUT_REF.npz (numpy.savez): ``inputs`` [n, C, S, S] in [-1, 1] and ``logits``
[n, classes], PyTorch's float64 forward pass of the same model (the reference jem must match).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from official_wrn import JEMModel  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out_pt")
    p.add_argument("out_ref")
    p.add_argument("--depth", type=int, default=10)
    p.add_argument("--width", type=int, default=1)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--image_size", type=int, default=8)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--buffer", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--convert", metavar="OUT.safetensors",
                   help="also convert OUT.pt with convert_official_checkpoint.py (saves a second torch import)")
    p.add_argument("--dataset", default="mnist", help="--dataset of the conversion")
    a = p.parse_args()
    torch.manual_seed(a.seed)
    model = JEMModel(a.depth, a.width, a.channels, a.classes)
    # PyTorch's default init gives nearly constant logits; spread the classifier so that a
    # wrong layer or a transposed weight shows in the comparison.
    with torch.no_grad():
        model.class_output.weight.mul_(10.0)
    s = a.image_size
    buffer = torch.rand(a.buffer, a.channels, s, s) * 2 - 1
    torch.save({"model_state_dict": model.state_dict(), "replay_buffer": buffer}, a.out_pt)
    x = torch.rand(a.n, a.channels, s, s) * 2 - 1
    with torch.no_grad():
        logits = model.double()(x.double())
    np.savez(a.out_ref, inputs=x.numpy().astype(np.float32), logits=logits.numpy().astype(np.float32))
    print("wrote %s and %s" % (a.out_pt, a.out_ref))
    if a.convert:
        import convert_official_checkpoint as conv

        return conv.main([a.out_pt, a.convert, "--dataset", a.dataset])
    return 0


if __name__ == "__main__":
    sys.exit(main())
