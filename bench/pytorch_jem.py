#!/usr/bin/env python3
"""The JEM training iteration of `jem bench`, in PyTorch, for a side-by-side comparison.

Same network (the JEM Wide-ResNet without normalisation: biased convolutions, LeakyReLU, no
dropout, global average pool, linear head; see src/model/wide_resnet.cpp), same batch, p(x)
batch, SGLD chains and steps, same objective and optimizer as `jem bench` with the same config,
and the same three timed phases, each ended by a device synchronisation:

  sgld       draw from the replay buffer (reinit with probability reinit_freq), sgld_steps x
             (forward + gradient w.r.t. the input only), write back
  step       upload the batch, forward over [x_lab | x_data | x_q], loss, full backward, the
             statistics read back
  optimizer  the gradient norm, then the optimizer's update (lr with linear warm-up)

The data is synthetic (uniform [-1, 1) images of the dataset's shape), as in `jem bench`.

  /usr/bin/python3 bench/pytorch_jem.py --config configs/fashion-mnist.toml --threads 1
  python3 bench/pytorch_jem.py --config configs/cifar10.toml --device cuda --tf32 on --json out.json

Settings come from the flat TOML config (the keys `jem train` reads) and `--key value` flags on
top, as for `jem bench`. Conditional chains (w_pxy > 0) are not implemented here: refused.
`--channels-last` runs the network in PyTorch's channels-last memory format (the weights, and so
every activation; the images stay NCHW), PyTorch's counterpart of jem's JEM_CUDA_LAYOUT=nhwc:
a comparison in the same layout. The official code, and the default here, is NCHW.
"""

import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# The residual block is the one of tools/official_wrn.py (the official layout): one definition.
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent / "tools"))
from official_wrn import Block  # noqa: E402

# Image shape and classes of each dataset `jem` knows (bench.hpp: dataset_shape).
DATASETS = {
    "fashion-mnist": (1, 28, 10),
    "mnist": (1, 28, 10),
    "cifar10": (3, 32, 10),
    "svhn": (3, 32, 10),
    "cifar100": (3, 32, 100),
}

# The config keys this benchmark uses, with the defaults of TrainConfig (train_config.hpp).
DEFAULTS = {
    "seed": 1, "device": "auto", "threads": 0, "dataset": "cifar10", "batch_size": 64,
    "px_batch_size": 0, "depth": 28, "width": 10, "slope": 0.2, "buffer_size": 10000,
    "reinit_freq": 0.05, "sgld_steps": 20, "sgld_lr": 1.0, "sgld_std": 0.01, "clamp": False,
    "w_px": 1.0, "w_pxy": 0.0, "w_l2": 0.0, "optimizer": "adam", "lr": 1e-4, "beta1": 0.9,
    "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "momentum": 0.9, "warmup_iters": 1000,
}


def read_flat_toml(path):
    """The flat `key = value` TOML of configs/*.toml (tomllib when the Python has it)."""
    try:
        import tomllib
        with open(path, "rb") as f:
            return tomllib.load(f)
    except ImportError:
        pass
    out = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            key, sep, value = (s.strip() for s in line.partition("="))
            if not sep:
                sys.exit(f"{path}:{n}: expected key = value")
            if value.startswith('"'):
                out[key] = value.strip('"')
            elif value in ("true", "false"):
                out[key] = value == "true"
            elif value.startswith("["):
                out[key] = [int(v) for v in value.strip("[]").split(",") if v.strip()]
            else:
                out[key] = float(value) if any(c in value for c in ".eE") else int(value)
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="flat TOML config (configs/*.toml)")
    p.add_argument("--iterations", type=int, default=10, help="timed iterations")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    p.add_argument("--json", help="write the results as JSON to this file")
    p.add_argument("--check-reference", metavar="FILE", nargs="+",
                   help="only check the network and objective against reference vectors "
                        "(tests/data/wrn*.safetensors) and exit")
    p.add_argument("--channels-last", action="store_true",
                   help="the network in channels-last memory format (jem: JEM_CUDA_LAYOUT=nhwc)")
    p.add_argument("--tf32", choices=["on", "off"], default="on",
                   help="TF32 tensor-core math for convolutions and matmuls on a GPU "
                        "(jem: JEM_CUDA_MATH=tf32|fp32)")
    for key, default in DEFAULTS.items():
        kind = {bool: lambda s: s == "true", int: int, float: float, str: str}[type(default)]
        p.add_argument("--" + key, type=kind, default=None)
    args = p.parse_args(argv)
    cfg = dict(DEFAULTS)
    if args.config:
        for key, value in read_flat_toml(args.config).items():
            if key in cfg:
                cfg[key] = type(DEFAULTS[key])(value)
    for key in DEFAULTS:
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    if args.iterations < 1 or args.warmup < 0:
        p.error("--iterations must be >= 1 and --warmup >= 0")
    if cfg["dataset"] not in DATASETS:
        p.error(f"dataset {cfg['dataset']!r}: expected one of {', '.join(DATASETS)}")
    if cfg["w_pxy"] != 0:
        p.error("w_pxy > 0 (conditional chains) is not implemented in the PyTorch reference")
    if (cfg["depth"] - 4) % 6 or cfg["depth"] < 10:
        p.error(f"depth {cfg['depth']} is not 6n+4")
    return args, cfg


class WideResNet(nn.Module):
    """The JEM Wide-ResNet with norm=None: stem, 3 stages of (depth-4)/6 blocks, lrelu, mean
    over H and W, linear head. PyTorch's default initialisation, as jem's init()."""

    def __init__(self, depth, width, in_channels, n_classes, slope):
        super().__init__()
        n = (depth - 4) // 6
        self.slope = slope
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=True)
        layers, in_planes = [], 16
        for stage, planes in enumerate((16 * width, 32 * width, 64 * width)):
            for b in range(n):
                stride = 2 if stage > 0 and b == 0 else 1
                layers.append(Block(in_planes, planes, stride, slope))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.class_output = nn.Linear(in_planes, n_classes)

    def forward(self, x):
        out = self.layers(self.conv1(x))
        out = F.leaky_relu(out, self.slope).mean(dim=(2, 3))
        return self.class_output(out)


def energy(logits):
    return -torch.logsumexp(logits, dim=1)


def jem_loss(f, cfg, x_lab, y, x_data=None, x_q=None):
    """The objective of jem's JemObjective (w_pxy = 0): CE(x_lab) + w_px (mean E(x_data) -
    mean E(x_q)) + w_l2 (mean E(x_data)^2 + mean E(x_q)^2), all rows in one forward pass.
    Returns (loss, logits[rows, K])."""
    B = x_lab.shape[0]
    rows = [x_lab] if x_data is None else [x_lab, x_data, x_q]
    logits = f(torch.cat(rows))  # [rows, K]
    loss = F.cross_entropy(logits[:B], y)
    if x_data is not None:
        e = energy(logits[B:])
        e_data, e_q = e[:x_data.shape[0]], e[x_data.shape[0]:]
        loss = loss + cfg["w_px"] * (e_data.mean() - e_q.mean())
        loss = loss + cfg["w_l2"] * ((e_data ** 2).mean() + (e_q ** 2).mean())
    return loss, logits


def read_safetensors(path):
    """{name: tensor} of a safetensors file (F32 and I64 only), and its metadata."""
    with open(path, "rb") as fh:
        raw = fh.read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    kinds = {"F32": torch.float32, "I64": torch.int64}
    out = {}
    for name, h in header.items():
        begin, end = h["data_offsets"]
        data = bytearray(raw[8 + n + begin:8 + n + end])
        out[name] = torch.frombuffer(data, dtype=kinds[h["dtype"]]).reshape(h["shape"]).clone()
    return out, meta


def check_reference(path, channels_last=False):
    """This script's network and objective against the reference vectors of the official JEM
    code (tests/data/*.safetensors, the ones jem's own model is tested against): logits, energy,
    dE/dx, the loss and every parameter gradient, in either memory format. Exits 1 on a
    mismatch."""
    t, meta = read_safetensors(path)
    cfg = dict(DEFAULTS, w_px=1.0, w_l2=0.0)
    f = WideResNet(int(meta["depth"]), int(meta["width"]), int(meta["channels"]), int(meta["n_classes"]),
                   float(meta["leak"]))
    # Official names -> this module's: f.conv1 -> conv1, f.layerS.B -> layers.(S-1)*n+B.
    n = (int(meta["depth"]) - 4) // 6
    def official(name):
        if name.startswith("layers."):
            _, i, rest = name.split(".", 2)
            return f"f.layer{int(i) // n + 1}.{int(i) % n}.{rest}"
        return name if name.startswith("class_output") else "f." + name
    with torch.no_grad():
        for name, p in f.named_parameters():
            p.copy_(t[official(name)])
    if channels_last:
        f = f.to(memory_format=torch.channels_last)
    x = t["input.x"].requires_grad_(True)
    logits = f(x)
    e = energy(logits)
    (dE_dx,) = torch.autograd.grad(e.sum(), [x])
    loss, _ = jem_loss(f, cfg, t["input.x"], t["input.y"], t["input.x_data"], t["input.x_q"])
    loss.backward()
    checks = [("logits", logits, t["output.logits"]), ("energy", e, t["output.energy"]),
              ("dE_dx", dE_dx, t["output.dE_dx"]), ("loss", loss.reshape(1), t["output.loss"])]
    checks += [("grad " + official(name), p.grad, t["grad." + official(name)]) for name, p in f.named_parameters()]
    worst = 0.0
    for what, got, want in checks:
        # ||got - want|| / ||want||, with jem's tolerance for these files (test_wide_resnet.cpp:
        # kRefTol): float32 sums in another order (another thread count, another GEMM) stay
        # under 5e-5 here (the first conv's weight gradient, a sum of 3072 terms per element
        # with cancellation, is the worst); a real difference, e.g. a LeakyReLU slope of 0.21
        # instead of 0.2, gives 1.6e-2.
        err = ((got.detach() - want).norm() / want.norm().clamp_min(1e-30)).item()
        worst = max(worst, err)
        if err > 2e-4:
            print(f"pytorch_jem: {path}: {what} differs from the reference: relative error {err:.3g}")
            sys.exit(1)
    layout = ", channels-last" if channels_last else ""
    print(f"pytorch_jem: {path}{layout}: {len(checks)} tensors match the reference (worst relative error {worst:.2g})")


def scheduled_lr(cfg, iteration):
    lr = cfg["lr"]
    if cfg["warmup_iters"] > 0 and iteration < cfg["warmup_iters"]:
        lr *= (iteration + 1) / cfg["warmup_iters"]
    return lr


def make_optimizer(cfg, params):
    betas = (cfg["beta1"], cfg["beta2"])
    if cfg["optimizer"] == "adam":
        return torch.optim.Adam(params, lr=cfg["lr"], betas=betas, eps=cfg["eps"],
                                weight_decay=cfg["weight_decay"])
    if cfg["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=cfg["lr"], betas=betas, eps=cfg["eps"],
                                 weight_decay=cfg["weight_decay"])
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"],
                               weight_decay=cfg["weight_decay"])
    sys.exit(f"optimizer {cfg['optimizer']!r}: expected adam, adamw or sgd")


def forward_flops(depth, width, in_channels, size, n_classes):
    """2 x multiply-adds of the convolutions and the head, per image (flops.hpp's convention)."""
    macs = 16 * in_channels * 9 * size * size
    in_planes = 16
    for stage, planes in enumerate((16 * width, 32 * width, 64 * width)):
        for b in range((depth - 4) // 6):
            stride = 2 if stage > 0 and b == 0 else 1
            out = size // stride
            macs += planes * in_planes * 9 * size * size + planes * planes * 9 * out * out
            if stride != 1 or in_planes != planes:
                macs += planes * in_planes * out * out
            in_planes, size = planes, out
    return 2.0 * (macs + in_planes * n_classes)


def main(argv):
    args, cfg = parse_args(argv)
    if args.check_reference:
        for path in args.check_reference:
            check_reference(path, args.channels_last)
        return
    device = cfg["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    on_gpu = device.type == "cuda"
    if cfg["threads"] > 0:
        torch.set_num_threads(cfg["threads"])
    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = args.tf32 == "on"
        torch.backends.cudnn.allow_tf32 = args.tf32 == "on"
        torch.backends.cudnn.benchmark = True  # jem benchmarks cuDNN's algorithms too
    torch.manual_seed(cfg["seed"])

    C, S, K = DATASETS[cfg["dataset"]]
    B = cfg["batch_size"]
    Bp = cfg["px_batch_size"] or B
    uses_px = cfg["w_px"] != 0 or cfg["w_l2"] != 0
    steps, a, s = cfg["sgld_steps"], cfg["sgld_lr"], cfg["sgld_std"]
    f = WideResNet(cfg["depth"], cfg["width"], C, K, cfg["slope"]).to(device)
    if args.channels_last:  # the weights' format, which the convolutions' outputs follow
        f = f.to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg, f.parameters())
    buffer = torch.rand(cfg["buffer_size"], C, S, S, device=device) * 2 - 1
    x_lab_host = torch.rand(B, C, S, S) * 2 - 1  # [B, C, S, S]
    x_data_host = torch.rand(Bp, C, S, S) * 2 - 1  # [Bp, C, S, S]
    y_host = torch.arange(B) % K  # [B]

    def sync():
        if on_gpu:
            torch.cuda.synchronize(device)

    def sgld():
        idx = torch.randint(0, cfg["buffer_size"], (Bp,), device=device)
        fresh = torch.rand(Bp, C, S, S, device=device) * 2 - 1
        reinit = (torch.rand(Bp, device=device) < cfg["reinit_freq"]).float()[:, None, None, None]
        x = (reinit * fresh + (1 - reinit) * buffer[idx]).detach()  # [Bp, C, S, S]
        for _ in range(steps):
            x.requires_grad_(True)
            # Gradient w.r.t. x only: autograd skips the weight gradients.
            g = torch.autograd.grad(energy(f(x)).sum(), [x])[0]
            x = (x.detach() - a * g + s * torch.randn_like(x))
            if cfg["clamp"]:
                x = x.clamp(-1, 1)
        buffer[idx] = x
        return x

    def step(x_q):
        x_lab = x_lab_host.to(device)
        y = y_host.to(device)
        x_data = x_data_host.to(device) if uses_px else None
        opt.zero_grad()
        loss, logits = jem_loss(f, cfg, x_lab, y, x_data, x_q)
        loss.backward()
        # The statistics jem's objective reads back: loss, accuracy, max |energy|.
        acc = (logits[:B].argmax(1) == y).float().mean()
        stats = torch.stack([loss.detach(), acc, energy(logits.detach()).abs().max()]).tolist()
        return stats

    def optimize(it):
        sq = torch.stack([p.grad.pow(2).sum() for p in f.parameters()]).sum()
        grad_norm = math.sqrt(sq.item())
        for group in opt.param_groups:
            group["lr"] = scheduled_lr(cfg, it)
        opt.step()
        return grad_norm

    times = {"sgld": [], "step": [], "optimizer": [], "total": []}
    sync()
    for it in range(args.warmup + args.iterations):
        t0 = time.perf_counter()
        x_q = sgld() if uses_px else None
        sync()
        t1 = time.perf_counter()
        step(x_q)
        sync()
        t2 = time.perf_counter()
        optimize(it)
        sync()
        t3 = time.perf_counter()
        if it < args.warmup:
            continue
        for key, (u, v) in {"sgld": (t0, t1), "step": (t1, t2), "optimizer": (t2, t3),
                            "total": (t0, t3)}.items():
            times[key].append((v - u) * 1e3)

    rows = B + (2 * Bp if uses_px else 0)
    chains = Bp if uses_px else 0
    fwd = forward_flops(cfg["depth"], cfg["width"], C, S, K)
    flops = {"sgld": chains * steps * 2 * fwd, "step": rows * 3 * fwd}
    flops["total"] = flops["sgld"] + flops["step"]
    total_s = statistics.median(times["total"]) / 1e3
    threads = torch.get_num_threads()
    if on_gpu:
        name = torch.cuda.get_device_name(device)
        backend = (f"pytorch {torch.__version__} {device} ({name}, {'TF32' if args.tf32 == 'on' else 'FP32'} math"
                   f"{', channels-last' if args.channels_last else ''})")
        peak_mem = torch.cuda.max_memory_allocated(device)
    else:
        backend = f"pytorch {torch.__version__} cpu ({threads} threads{', channels-last' if args.channels_last else ''})"
        peak_mem = None
        try:
            import resource
            peak_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        except ImportError:
            pass
    result = {
        "model": f"WRN-{cfg['depth']}-{cfg['width']}, {C}x{S}x{S}, {K} classes",
        "depth": cfg["depth"], "width": cfg["width"], "dataset": cfg["dataset"],
        "params": sum(p.numel() for p in f.parameters()),
        "backend": backend, "threads": threads, "batch_size": B, "px_batch_size": Bp,
        "memory_format": "channels_last" if args.channels_last else "contiguous",
        "sgld_steps": steps, "sgld_chains": chains, "rows": rows, "optimizer": cfg["optimizer"],
        "warmup_iterations": args.warmup, "iterations": args.iterations,
        "ms_per_iteration": {k: statistics.median(v) for k, v in times.items()},
        "ms_per_iteration_mean": {k: statistics.fmean(v) for k, v in times.items()},
        "iteration_ms": times["total"],
        "images_per_second": B / total_s,
        "flops_per_iteration": flops,
        "achieved_flops_per_second": flops["total"] / total_s,
        "peak_memory_bytes": peak_mem,
    }
    ms = result["ms_per_iteration"]
    print(f"pytorch_jem: {result['model']}, {result['params']} parameters, {backend}")
    print(f"batch {B} + p(x) batch {Bp} ({rows} rows), {chains} SGLD chains x {steps} steps; "
          f"{args.iterations} timed iterations")
    print(f"ms/iteration (medians): total {ms['total']:.2f}; sgld {ms['sgld']:.2f}, "
          f"step {ms['step']:.2f}, optimizer {ms['optimizer']:.2f}")
    print(f"{result['images_per_second']:.1f} images/s, {flops['total'] / 1e9:.3g} GFLOP/iteration, "
          f"{result['achieved_flops_per_second'] / 1e9:.1f} GFLOP/s")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)
            out.write("\n")


if __name__ == "__main__":
    main(sys.argv[1:])
