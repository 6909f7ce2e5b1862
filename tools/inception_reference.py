#!/usr/bin/python3
"""Writes a numerical reference for jem's FID Inception-v3 from the PyTorch re-implementation
in tools/inception_torch.py, on random weights (the real ones cannot be shipped or downloaded).

  /usr/bin/python3 tools/inception_reference.py --out DIR [--image-size 139] [--seed 1]

DIR/inception_random.pth                  random weights as a plain state_dict (pytorch-fid's form)
DIR/inception_random.safetensors          the same converted by tools/convert_inception_weights.py
DIR/inception_reference.safetensors       images and the network's outputs:
    rgb.images [2, 3, 32, 32], rgb.features [2, 2048], rgb.logits [2, 1008]
    gray.images [2, 1, 28, 28], gray.features, gray.logits
The test (tests/test_inception_reference.cpp) runs this, then jem's network on the same files.
Exit status 77 when PyTorch is not installed (the test skips).
"""
import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--image-size", type=int, default=139)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        print("inception_reference: PyTorch is not installed", file=sys.stderr)
        sys.exit(77)
    torch.set_num_threads(1)  # the test machines' CPUs are shared
    from inception_torch import fid_inception_forward, random_state_dict
    from safetensors_write import write_safetensors

    os.makedirs(args.out, exist_ok=True)
    sd = random_state_dict(args.seed)
    pth = os.path.join(args.out, "inception_random.pth")
    torch.save(sd, pth)
    # The user's path: the converter turns the .pth into what jem loads.
    subprocess.run([sys.executable, os.path.join(HERE, "convert_inception_weights.py"), pth,
                    os.path.join(args.out, "inception_random.safetensors")], check=True,
                   stdout=subprocess.DEVNULL)
    g = torch.Generator().manual_seed(args.seed + 1)
    out = {}
    for tag, shape in (("rgb", (2, 3, 32, 32)), ("gray", (2, 1, 28, 28))):
        images = torch.rand(*shape, generator=g) * 2 - 1  # [-1, 1], as jem's images
        features, logits = fid_inception_forward(sd, images, args.image_size)
        out[tag + ".images"] = images
        out[tag + ".features"] = features
        out[tag + ".logits"] = logits
    write_safetensors(os.path.join(args.out, "inception_reference.safetensors"), out,
                      {"image_size": args.image_size, "torch": torch.__version__})
    os.remove(pth)


if __name__ == "__main__":
    main()
