"""An independent PyTorch re-implementation of the FID Inception-v3 forward pass, for checking
jem's C++ network (src/eval/inception_v3.cpp) numerically.

Written from the architecture (torchvision's Inception-v3 with pytorch-fid's FID blocks), in
functional form over a state_dict with pytorch-fid's names. Unlike jem it keeps BatchNorm
separate (eval mode, eps 1e-3) and follows pytorch-fid's input path literally: images in [0, 1]
are resized to the network size and then mapped to [-1, 1]; jem skips both maps because its
images are already in [-1, 1]. So a match also checks jem's BatchNorm folding and that shortcut.
"""
import torch
import torch.nn.functional as F

BN_EPS = 1e-3


def basic_conv(sd, name, x, stride=1, padding=(0, 0)):
    """conv (no bias) -> BatchNorm (running statistics) -> ReLU."""
    x = F.conv2d(x, sd[name + ".conv.weight"], stride=stride, padding=padding)
    x = F.batch_norm(x, sd[name + ".bn.running_mean"], sd[name + ".bn.running_var"],
                     sd[name + ".bn.weight"], sd[name + ".bn.bias"], training=False, eps=BN_EPS)
    return F.relu(x)


def avg_pool_no_pad(x):
    # FID blocks: 3x3, stride 1, padding 1, padding NOT counted in the mean.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def block_a(sd, p, x):
    b1 = basic_conv(sd, p + ".branch1x1", x)
    b5 = basic_conv(sd, p + ".branch5x5_2", basic_conv(sd, p + ".branch5x5_1", x), padding=(2, 2))
    b3 = basic_conv(sd, p + ".branch3x3dbl_1", x)
    b3 = basic_conv(sd, p + ".branch3x3dbl_2", b3, padding=(1, 1))
    b3 = basic_conv(sd, p + ".branch3x3dbl_3", b3, padding=(1, 1))
    bp = basic_conv(sd, p + ".branch_pool", avg_pool_no_pad(x))
    return torch.cat([b1, b5, b3, bp], dim=1)


def block_b(sd, p, x):
    b3 = basic_conv(sd, p + ".branch3x3", x, stride=2)
    bd = basic_conv(sd, p + ".branch3x3dbl_1", x)
    bd = basic_conv(sd, p + ".branch3x3dbl_2", bd, padding=(1, 1))
    bd = basic_conv(sd, p + ".branch3x3dbl_3", bd, stride=2)
    return torch.cat([b3, bd, F.max_pool2d(x, kernel_size=3, stride=2)], dim=1)


def block_c(sd, p, x):
    b1 = basic_conv(sd, p + ".branch1x1", x)
    b7 = basic_conv(sd, p + ".branch7x7_1", x)
    b7 = basic_conv(sd, p + ".branch7x7_2", b7, padding=(0, 3))
    b7 = basic_conv(sd, p + ".branch7x7_3", b7, padding=(3, 0))
    bd = basic_conv(sd, p + ".branch7x7dbl_1", x)
    for i, pad in ((2, (3, 0)), (3, (0, 3)), (4, (3, 0)), (5, (0, 3))):
        bd = basic_conv(sd, f"{p}.branch7x7dbl_{i}", bd, padding=pad)
    bp = basic_conv(sd, p + ".branch_pool", avg_pool_no_pad(x))
    return torch.cat([b1, b7, bd, bp], dim=1)


def block_d(sd, p, x):
    b3 = basic_conv(sd, p + ".branch3x3_2", basic_conv(sd, p + ".branch3x3_1", x), stride=2)
    b7 = basic_conv(sd, p + ".branch7x7x3_1", x)
    b7 = basic_conv(sd, p + ".branch7x7x3_2", b7, padding=(0, 3))
    b7 = basic_conv(sd, p + ".branch7x7x3_3", b7, padding=(3, 0))
    b7 = basic_conv(sd, p + ".branch7x7x3_4", b7, stride=2)
    return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], dim=1)


def block_e(sd, p, x, max_pool_branch):
    b1 = basic_conv(sd, p + ".branch1x1", x)
    t = basic_conv(sd, p + ".branch3x3_1", x)
    b3 = torch.cat([basic_conv(sd, p + ".branch3x3_2a", t, padding=(0, 1)),
                    basic_conv(sd, p + ".branch3x3_2b", t, padding=(1, 0))], dim=1)
    t = basic_conv(sd, p + ".branch3x3dbl_1", x)
    t = basic_conv(sd, p + ".branch3x3dbl_2", t, padding=(1, 1))
    bd = torch.cat([basic_conv(sd, p + ".branch3x3dbl_3a", t, padding=(0, 1)),
                    basic_conv(sd, p + ".branch3x3dbl_3b", t, padding=(1, 0))], dim=1)
    if max_pool_branch:  # FIDInceptionE_2
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
    else:  # FIDInceptionE_1
        pooled = avg_pool_no_pad(x)
    bp = basic_conv(sd, p + ".branch_pool", pooled)
    return torch.cat([b1, b3, bd, bp], dim=1)


@torch.no_grad()
def fid_inception_forward(sd, images, size=299):
    """images [N, C, H, W] in [-1, 1], C = 1 or 3 -> (pool3 features [N, 2048], logits [N, 1008])."""
    x = images.float()
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    x = (x + 1) / 2  # pytorch-fid's input range [0, 1]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = 2 * x - 1  # pytorch-fid's normalize_input
    x = basic_conv(sd, "Conv2d_1a_3x3", x, stride=2)
    x = basic_conv(sd, "Conv2d_2a_3x3", x)
    x = basic_conv(sd, "Conv2d_2b_3x3", x, padding=(1, 1))
    x = F.max_pool2d(x, kernel_size=3, stride=2)
    x = basic_conv(sd, "Conv2d_3b_1x1", x)
    x = basic_conv(sd, "Conv2d_4a_3x3", x)
    x = F.max_pool2d(x, kernel_size=3, stride=2)
    for b in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        x = block_a(sd, b, x)
    x = block_b(sd, "Mixed_6a", x)
    for b in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
        x = block_c(sd, b, x)
    x = block_d(sd, "Mixed_7a", x)
    x = block_e(sd, "Mixed_7b", x, max_pool_branch=False)
    x = block_e(sd, "Mixed_7c", x, max_pool_branch=True)
    features = x.mean(dim=(2, 3))
    logits = F.linear(features, sd["fc.weight"], sd["fc.bias"])
    return features, logits


# (name, out, in, kh, kw) of every BasicConv2d, for random weights in the tests.
def conv_shapes():
    s = [("Conv2d_1a_3x3", 32, 3, 3, 3), ("Conv2d_2a_3x3", 32, 32, 3, 3),
         ("Conv2d_2b_3x3", 64, 32, 3, 3), ("Conv2d_3b_1x1", 80, 64, 1, 1),
         ("Conv2d_4a_3x3", 192, 80, 3, 3)]
    for b, cin, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):
        s += [(b + ".branch1x1", 64, cin, 1, 1), (b + ".branch5x5_1", 48, cin, 1, 1),
              (b + ".branch5x5_2", 64, 48, 5, 5), (b + ".branch3x3dbl_1", 64, cin, 1, 1),
              (b + ".branch3x3dbl_2", 96, 64, 3, 3), (b + ".branch3x3dbl_3", 96, 96, 3, 3),
              (b + ".branch_pool", pool, cin, 1, 1)]
    s += [("Mixed_6a.branch3x3", 384, 288, 3, 3), ("Mixed_6a.branch3x3dbl_1", 64, 288, 1, 1),
          ("Mixed_6a.branch3x3dbl_2", 96, 64, 3, 3), ("Mixed_6a.branch3x3dbl_3", 96, 96, 3, 3)]
    for b, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        s += [(b + ".branch1x1", 192, 768, 1, 1), (b + ".branch7x7_1", c7, 768, 1, 1),
              (b + ".branch7x7_2", c7, c7, 1, 7), (b + ".branch7x7_3", 192, c7, 7, 1),
              (b + ".branch7x7dbl_1", c7, 768, 1, 1), (b + ".branch7x7dbl_2", c7, c7, 7, 1),
              (b + ".branch7x7dbl_3", c7, c7, 1, 7), (b + ".branch7x7dbl_4", c7, c7, 7, 1),
              (b + ".branch7x7dbl_5", 192, c7, 1, 7), (b + ".branch_pool", 192, 768, 1, 1)]
    s += [("Mixed_7a.branch3x3_1", 192, 768, 1, 1), ("Mixed_7a.branch3x3_2", 320, 192, 3, 3),
          ("Mixed_7a.branch7x7x3_1", 192, 768, 1, 1), ("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7),
          ("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1), ("Mixed_7a.branch7x7x3_4", 192, 192, 3, 3)]
    for b, cin in (("Mixed_7b", 1280), ("Mixed_7c", 2048)):
        s += [(b + ".branch1x1", 320, cin, 1, 1), (b + ".branch3x3_1", 384, cin, 1, 1),
              (b + ".branch3x3_2a", 384, 384, 1, 3), (b + ".branch3x3_2b", 384, 384, 3, 1),
              (b + ".branch3x3dbl_1", 448, cin, 1, 1), (b + ".branch3x3dbl_2", 384, 448, 3, 3),
              (b + ".branch3x3dbl_3a", 384, 384, 1, 3), (b + ".branch3x3dbl_3b", 384, 384, 3, 1),
              (b + ".branch_pool", 192, cin, 1, 1)]
    return s


def random_state_dict(seed):
    """He-normal convolutions, BatchNorm statistics near identity: activations stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, cout, cin, kh, kw in conv_shapes():
        fan_in = cin * kh * kw
        sd[name + ".conv.weight"] = torch.randn(cout, cin, kh, kw, generator=g) * (2.0 / fan_in) ** 0.5
        sd[name + ".bn.weight"] = 0.5 + torch.rand(cout, generator=g)
        sd[name + ".bn.bias"] = 0.2 * torch.rand(cout, generator=g) - 0.1
        sd[name + ".bn.running_mean"] = 0.2 * torch.rand(cout, generator=g) - 0.1
        sd[name + ".bn.running_var"] = 0.5 + torch.rand(cout, generator=g)
        sd[name + ".bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.int64)  # as in a real file
    sd["fc.weight"] = torch.randn(1008, 2048, generator=g) * (1.0 / 2048) ** 0.5
    sd["fc.bias"] = 0.2 * torch.rand(1008, generator=g) - 0.1
    return sd
