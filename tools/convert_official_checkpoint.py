#!/usr/bin/python3
"""Convert a checkpoint of the official PyTorch JEM code into a jem checkpoint.

The official training script saves ``torch.save({"model_state_dict": f.state_dict(),
"replay_buffer": buffer}, path)``. This writes a safetensors file with the parameters jem's
Wide-ResNet uses (same names), the replay buffer, and the metadata jem reads: the architecture
(depth, width, channels, image_size, n_classes, slope) and a training config (dataset, sigma,
sampler settings), so that ``jem eval``, ``jem report`` and ``jem sample`` work on it. The result
cannot resume training (it holds no optimizer state); its format is ``jem-official-1``.

    /usr/bin/python3 tools/convert_official_checkpoint.py official.pt out.safetensors \
        [--dataset cifar10] [--image_size 32] [--sigma 0.03] [--slope 0.2]

Needs PyTorch (Debian: apt-get install python3-torch); runs on the CPU.
"""
import argparse
import json
import os
import re
import struct
import sys

KNOWN_DATASETS = ("cifar10", "cifar100", "svhn", "fashion-mnist", "mnist")


class ConvertError(Exception):
    pass


def load_official(path):
    # Cheap checks first (no torch import): torch.save writes a zip archive ("PK"), older
    # versions a pickle (protocol byte 0x80).
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
    except OSError as e:
        raise ConvertError("%s: cannot read (%s)" % (path, e.strerror))
    if magic != b"PK" and magic[:1] != b"\x80":
        raise ConvertError("%s: not a torch checkpoint (neither a zip archive nor a pickle)" % path)
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu")
    except Exception as e:  # unreadable, not a torch file, ...
        raise ConvertError("%s: cannot read as a torch checkpoint (%s)" % (path, e))
    if not isinstance(ckpt, dict):
        raise ConvertError("%s: expected a dict, found %s" % (path, type(ckpt).__name__))
    if "model_state_dict" in ckpt:
        sd = ckpt["model_state_dict"]
    elif "f.conv1.weight" in ckpt:
        sd = ckpt  # a bare state dict
    else:
        raise ConvertError("%s: no 'model_state_dict' (keys: %s)" % (path, ", ".join(sorted(map(str, ckpt))[:8])))
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    return sd, ckpt.get("replay_buffer")


def architecture(sd, path):
    """depth, width, in_channels, n_classes from the tensor shapes."""
    for k in sd:
        if re.search(r"(bn\d|norm)\.(weight|running_mean)$", k):
            raise ConvertError("%s: tensor '%s' is a normalisation layer; jem implements the norm=None "
                               "network only" % (path, k))
    for k in ("f.conv1.weight", "f.layer1.0.conv1.weight", "class_output.weight"):
        if k not in sd:
            raise ConvertError("%s: tensor '%s' missing: not a JEM Wide-ResNet state dict" % (path, k))
    n = len({int(m.group(1)) for k in sd for m in [re.match(r"f\.layer1\.(\d+)\.conv1\.weight$", k)] if m})
    width16 = sd["f.layer1.0.conv1.weight"].shape[0]
    if width16 % 16:
        raise ConvertError("%s: f.layer1.0.conv1.weight has %d filters, not a multiple of 16" % (path, width16))
    return 6 * n + 4, width16 // 16, sd["f.conv1.weight"].shape[1], sd["class_output.weight"].shape[0]


def jem_param_names(depth, width, in_channels):
    """The parameters of jem's WideResNet in its order (src/model/wide_resnet.cpp)."""
    names = ["f.conv1.weight", "f.conv1.bias"]
    n, in_planes = (depth - 4) // 6, 16
    for s, planes in enumerate((16 * width, 32 * width, 64 * width)):
        for b in range(n):
            stride = 2 if s > 0 and b == 0 else 1
            pre = "f.layer%d.%d" % (s + 1, b)
            names += [pre + ".conv1.weight", pre + ".conv1.bias", pre + ".conv2.weight", pre + ".conv2.bias"]
            if stride != 1 or in_planes != planes:
                names += [pre + ".shortcut.0.weight", pre + ".shortcut.0.bias"]
            in_planes = planes
    return names + ["class_output.weight", "class_output.bias"]


def write_safetensors(path, tensors, metadata):
    """tensors: list of (name, float32 numpy array); written atomically."""
    header, offset = {}, 0
    for name, a in tensors:
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    header["__metadata__"] = metadata
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = "%s.tmp.%d" % (path, os.getpid())
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(h)))
            f.write(h)
            for _, a in tensors:
                f.write(a.astype("<f4").tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise ConvertError("%s: cannot write (%s)" % (path, e))


def config_toml(dataset, depth, width, slope, sigma, buffer_size):
    """A config jem's parser reads (keys of include/jem/train_config.hpp); the rest are defaults."""
    return "\n".join([
        "# converted from an official JEM checkpoint (tools/convert_official_checkpoint.py)",
        'dataset = "%s"' % dataset,
        "depth = %d" % depth,
        "width = %d" % width,
        "slope = %r" % slope,
        "sigma = %r" % sigma,
        "buffer_size = %d" % buffer_size,
        "sgld_steps = 20",
        "sgld_lr = 1.0",
        "sgld_std = 0.01",
        "",
    ])


def convert(src, dst, dataset=None, image_size=None, sigma=0.03, slope=0.2):
    sd, buffer = load_official(src)
    depth, width, channels, classes = architecture(sd, src)
    if buffer is not None:
        buffer = buffer.detach().float().cpu().numpy()
        if buffer.ndim != 4 or buffer.shape[1] != channels or buffer.shape[2] != buffer.shape[3]:
            raise ConvertError("%s: replay_buffer has shape %s, expected [S, %d, H, H]" % (src, list(buffer.shape), channels))
        if image_size is not None and image_size != buffer.shape[2]:
            raise ConvertError("%s: --image_size %d but the replay buffer holds %dx%d images"
                               % (src, image_size, buffer.shape[2], buffer.shape[3]))
        image_size = buffer.shape[2]
    if image_size is None:
        image_size = 32
    if dataset is None:
        guess = {(3, 10): "cifar10", (3, 100): "cifar100"}.get((channels, classes))
        if guess is None:
            raise ConvertError("%s: %d channels and %d classes: give --dataset" % (src, channels, classes))
        dataset = guess
    if dataset not in KNOWN_DATASETS:
        raise ConvertError("unknown --dataset '%s' (known: %s)" % (dataset, ", ".join(KNOWN_DATASETS)))
    tensors = []
    for name in jem_param_names(depth, width, channels):
        if name not in sd:
            raise ConvertError("%s: tensor '%s' missing" % (src, name))
        tensors.append((name, sd[name].detach().float().cpu().numpy()))
    if buffer is not None:
        tensors.append(("replay_buffer", buffer))
    meta = {
        "format": "jem-official-1",
        "model": "WRN-%d-%d, %dx%dx%d, %d classes" % (depth, width, channels, image_size, image_size, classes),
        "depth": str(depth), "width": str(width), "channels": str(channels), "image_size": str(image_size),
        "n_classes": str(classes), "slope": repr(slope), "iteration": "0", "source": os.path.basename(src),
        "config": config_toml(dataset, depth, width, slope, sigma, 10000 if buffer is None else buffer.shape[0]),
    }
    write_safetensors(dst, tensors, meta)
    return meta


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("src", help="official checkpoint (torch.save dict)")
    p.add_argument("dst", help="output .safetensors")
    p.add_argument("--dataset", choices=KNOWN_DATASETS, help="data set it was trained on (default: from the shapes)")
    p.add_argument("--image_size", type=int, help="image side (default: from the replay buffer, else 32)")
    p.add_argument("--sigma", type=float, default=0.03, help="data noise of the run (default 0.03)")
    p.add_argument("--slope", type=float, default=0.2, help="LeakyReLU slope (default 0.2)")
    a = p.parse_args(argv)
    try:
        meta = convert(a.src, a.dst, a.dataset, a.image_size, a.sigma, a.slope)
    except ConvertError as e:
        print("convert_official_checkpoint: error: %s" % e, file=sys.stderr)
        return 1
    except ImportError as e:
        print("convert_official_checkpoint: error: PyTorch is needed (apt-get install python3-torch): %s" % e,
              file=sys.stderr)
        return 1
    print("wrote %s (%s)" % (a.dst, meta["model"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
