#!/usr/bin/python3
"""Converts pytorch-fid's FID Inception weights to safetensors for `jem`.

  /usr/bin/python3 tools/convert_inception_weights.py \
      pt_inception-2015-12-05-6726825d.pth inception_fid.safetensors

The input is the plain state_dict that pytorch-fid downloads (see docs/fid.md). Every floating
tensor is written as float32 under its pytorch-fid name ("Mixed_6b.branch7x7_2.conv.weight",
"fc.bias", ...); integer bookkeeping tensors (BatchNorm's num_batches_tracked) are dropped.
The file is checked to be the FID Inception network before anything is written.
Needs PyTorch (Debian: apt-get install python3-torch).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# A few tensors whose presence and shape identify pytorch-fid's FID Inception-v3 (1008 classes,
# no auxiliary head): a wrong file is rejected with the first mismatch named.
_SIGNATURE = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.bn.running_var": (192,),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input", help="pt_inception-2015-12-05-6726825d.pth (pytorch-fid's weights)")
    ap.add_argument("output", help="the safetensors file to write")
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        sys.exit("convert_inception_weights: PyTorch is missing (apt-get install python3-torch)")
    from safetensors_write import write_safetensors

    try:
        state = torch.load(args.input, map_location="cpu")
    except Exception as e:  # a corrupt or non-PyTorch file: one line naming it
        sys.exit(f"convert_inception_weights: {args.input}: cannot load: {e}")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        sys.exit(f"convert_inception_weights: {args.input}: not a state_dict ({type(state).__name__})")
    for name, shape in _SIGNATURE.items():
        if name not in state:
            sys.exit(f"convert_inception_weights: {args.input}: no tensor '{name}': "
                     "not pytorch-fid's FID Inception weights")
        if tuple(state[name].shape) != shape:
            sys.exit(f"convert_inception_weights: {args.input}: tensor '{name}' has shape "
                     f"{tuple(state[name].shape)}, expected {shape}")
    out, dropped = {}, []
    for name, t in state.items():
        if not torch.is_tensor(t) or not t.is_floating_point():
            dropped.append(name)
            continue
        out[name] = t.to(torch.float32)
    write_safetensors(args.output, out, {"source": os.path.basename(args.input),
                                         "network": "pytorch-fid FID Inception-v3 (pt_inception-2015-12-05)"})
    n_params = sum(t.numel() for t in out.values())
    print(f"wrote {args.output}: {len(out)} tensors, {n_params} values"
          f" ({len(dropped)} non-float entries dropped)")


if __name__ == "__main__":
    main()
