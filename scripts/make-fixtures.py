#!/usr/bin/env python3
"""Writes the PyTorch reference fixtures the Swift tests compare against.

Independent of the Swift code: LRP here is the layer-by-layer autograd recipe of the BiLRP
authors (modified layer forward, z, s = R / stab(z), (z * s).sum().backward(), R = a * grad), and
the Hessian x Product baseline is the true mixed second derivative through double backward, not
the factorization the Swift code uses. Random weights have nonzero biases, so bias handling is
tested. Run once; the outputs are committed (Tests/BiLRPTests/Fixtures, under 5 MiB).

    python3 -m venv .venv-fixtures && .venv-fixtures/bin/pip install torch==2.13.0+cpu numpy safetensors onnx onnxruntime
    .venv-fixtures/bin/pip install --no-deps zennit==0.5.1
    .venv-fixtures/bin/python scripts/make-fixtures.py

The ONNX checks run onnxruntime (pip install onnx onnxruntime) and, for the real VGG-16, need
scripts/fetch-assets.sh to have run.
"""
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

torch.set_default_dtype(torch.float64)  # the reference is computed in float64
OUT = os.path.join(os.path.dirname(__file__), "..", "Tests", "BiLRPTests", "Fixtures")
EPS = 1e-9
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
LOW, HIGH = (0 - MEAN) / STD, (1 - MEAN) / STD

PRESETS = {
    "paper-vgg": "0:zb;1-10:gamma=0.5;11-17:gamma=0.25;18-24:gamma=0.1;25-:zero",
    "hp": "*:zero",
    "epsilon-gamma-box": "first:zb;conv:gamma=0.25;linear:epsilon=1e-6",
    "epsilon-plus-flat": "first:flat;conv:zplus;linear:epsilon=1e-6",
}


# ---------------------------------------------------------------- composites
def parse_composite(spec):
    spec = PRESETS.get(spec, spec)
    entries = []
    for item in spec.split(";"):
        sel, rule = item.split(":", 1)
        name, _, arg = rule.partition("=")
        entries.append((sel, name, arg))
    return entries


def rule_for(entries, index, kind, is_first):
    for sel, name, arg in entries:
        hit = False
        if sel == "*":
            hit = True
        elif sel == "first":
            hit = is_first
        elif sel in ("conv", "linear", "max", "min", "add"):
            hit = sel == kind
        elif "-" in sel:
            lo, hi = sel.split("-")
            hit = (int(lo) if lo else 0) <= index <= (int(hi) if hi else 10**9)
        else:
            hit = int(sel) == index
        if hit:
            return name, arg
    return "zero", ""


# ---------------------------------------------------------------- LRP
def stab(z, eps):
    return z + eps * torch.where(z >= 0, 1.0, -1.0)


def layer_with(layer, wfun, bfun):
    """A copy of a conv/linear layer with modified weight and bias (bfun None: no bias)."""
    new = type(layer).__new__(type(layer))
    new.__dict__ = layer.__dict__.copy()
    new._parameters = {"weight": nn.Parameter(wfun(layer.weight.detach()))}
    b = layer.bias.detach() if layer.bias is not None else None
    new._parameters["bias"] = nn.Parameter(bfun(b)) if (bfun is not None and b is not None) else None
    return new


def passes(name, arg, g=None):
    """The rule as [(scale, [(input modifier, weight modifier)], bias modifier, eps)]."""
    ident = lambda w: w
    pos = lambda w: w.clamp(min=0)
    neg = lambda w: w.clamp(max=0)
    inp_id, inp_pos, inp_neg = (lambda a: a), (lambda a: a.clamp(min=0)), (lambda a: a.clamp(max=0))
    if name == "zero":
        return [(1.0, [(inp_id, ident)], ident, EPS)]
    if name == "epsilon":
        return [(1.0, [(inp_id, ident)], ident, float(arg))]
    if name == "gamma":
        gm = float(arg)
        f = lambda w: w + gm * w.clamp(min=0)
        return [(1.0, [(inp_id, f)], f, EPS)]
    if name in ("zplus", "alphabeta"):
        alpha, beta = (1.0, 0.0) if name == "zplus" else map(float, arg.split(","))
        out = [(alpha, [(inp_pos, pos), (inp_neg, neg)], pos, EPS)]
        if beta:
            out.append((-beta, [(inp_pos, neg), (inp_neg, pos)], neg, EPS))
        return out
    if name == "wsquare":
        return [(1.0, [(torch.ones_like, lambda w: w * w)], None, EPS)]
    if name == "flat":
        return [(1.0, [(torch.ones_like, torch.ones_like)], None, EPS)]
    raise ValueError(name)


def relevance_backward(layers, kinds, entries, acts, R):
    """Propagates a batch of relevance maps R (n, ...) from the output of `layers` to the input."""
    n = R.shape[0]
    first = next(i for i, k in enumerate(kinds) if k in ("conv", "linear"))
    for i in reversed(range(len(layers))):
        layer, kind = layers[i], kinds[i]
        a = acts[i].detach().expand(n, *acts[i].shape[1:])
        if kind == "relu":
            continue
        if kind == "maxpool":
            out, idx = F.max_pool2d(a, layer.kernel_size, layer.stride, layer.padding, return_indices=True)
            Rin = torch.zeros_like(a).flatten(2)
            Rin.scatter_add_(2, idx.flatten(2), R.flatten(2))
            R = Rin.view_as(a)
            continue
        name, arg = rule_for(entries, i, kind, i == first)
        if kind == "avgpool":
            eps = float(arg) if name == "epsilon" else EPS
            x = a.clone().requires_grad_(True)
            z = layer(x)
            s = (R / stab(z, eps)).detach()
            (z * s).sum().backward()
            R = (x * x.grad).detach()
            continue
        if name == "zb":
            x = a.clone().requires_grad_(True)
            lo = LOW.expand_as(a).clone().requires_grad_(True)
            hi = HIGH.expand_as(a).clone().requires_grad_(True)
            # biases cancel: (Wx + b) - (W+ l + b+) - (W- h + b-) with b+ + b- = b
            z = (layer_with(layer, lambda w: w, None)(x)
                 - layer_with(layer, lambda w: w.clamp(min=0), None)(lo)
                 - layer_with(layer, lambda w: w.clamp(max=0), None)(hi))
            s = (R / stab(z, EPS)).detach()
            (z * s).sum().backward()
            R = (x * x.grad + lo * lo.grad + hi * hi.grad).detach()
            continue
        Rin = torch.zeros_like(a)
        for scale, terms, bmod, eps in passes(name, arg):
            ins = [inmod(a).clone().requires_grad_(True) for inmod, _ in terms]
            z = sum(layer_with(layer, wmod, bmod if t == 0 else None)(x) for t, ((_, wmod), x) in enumerate(zip(terms, ins)))
            s = (R / stab(z, eps)).detach()
            (z * s).sum().backward()
            Rin = Rin + scale * sum(x * x.grad for x in ins).detach()
        R = Rin
    return R


def forward(layers, x):
    acts = [x]
    for l in layers:
        acts.append(l(acts[-1]))
    return acts


def factors(layers, kinds, entries, head, x, patch):
    """A (P, h) and phi (h,) with LRP-0 on the bias-free linear head."""
    acts = forward(layers, x)
    feat = acts[-1].flatten(1)[0]
    phi = head @ feat
    h = phi.numel()
    R = torch.diag(phi)  # map m starts from e_m phi_m
    s = R / stab(phi, EPS)
    Rfeat = (feat * (s @ head)).view(h, *acts[-1].shape[1:])
    Rx = relevance_backward(layers, kinds, entries, acts, Rfeat)
    return pool(Rx.sum(1), patch).T.contiguous(), phi


def pool(maps, patch):
    """(n, H, W) -> (n, P): sum over patch x patch squares, row-major, ragged borders kept."""
    n, H, W = maps.shape
    ph, pw = -(-H // patch), -(-W // patch)
    padded = F.pad(maps, (0, pw * patch - W, 0, ph * patch - H))
    return padded.view(n, ph, patch, pw, patch).sum((2, 4)).reshape(n, ph * pw)


def channel_maps(R):
    """Relevance (n, C, H, W) summed over the channels: (n, H, W) maps to pool."""
    return R.sum(1)


def token_maps(R):
    """Relevance of a sequence (n, T, D) summed over the features: (n, 1, T) maps to pool."""
    return R.sum(2).unsqueeze(1)


def hessian_product(layers, head, x1, x2, patch, maps=channel_maps):
    """HP[p, q] = sum_{i in p, j in q} x_i x'_j d2y / dx_i dx'_j, by double backward."""
    x1 = x1.clone().requires_grad_(True)
    x2 = x2.clone().requires_grad_(True)
    y = (head @ forward(layers, x1)[-1].flatten()) @ (head @ forward(layers, x2)[-1].flatten())
    (g2,) = torch.autograd.grad(y, x2, create_graph=True)
    contrib = pool(maps(x2 * g2), patch)[0]  # per patch q of x2: sum of x' dy/dx'
    cols = []
    for q in range(contrib.numel()):
        (g1,) = torch.autograd.grad(contrib[q], x1, retain_graph=True)
        cols.append(pool(maps((x1 * g1).detach()), patch)[0])
    return torch.stack(cols, 1), y.detach()


# ---------------------------------------------------------------- models
def kinds_of(layers):
    m = {nn.Conv2d: "conv", nn.ReLU: "relu", nn.MaxPool2d: "maxpool", nn.AvgPool2d: "avgpool", nn.Linear: "linear"}
    return [m[type(l)] for l in layers]


def randomize(layers, gen):
    for l in layers:
        if isinstance(l, nn.Conv2d):
            fan = l.weight[0].numel()  # (in / groups) kh kw
            l.weight.data = torch.randn(l.weight.shape, generator=gen) * math.sqrt(2 / fan)
            l.bias.data = torch.randn(l.bias.shape, generator=gen) * 0.1


def vgg16_features():
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    layers, c = [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
            c = v
    return layers


def small_net():
    return [nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 10, 3, stride=2, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Conv2d(10, 12, 3, stride=2, padding=0), nn.ReLU(), nn.AvgPool2d(2, stride=1)]


def image(gen, h, w):
    return (torch.rand(1, 3, h, w, generator=gen) - MEAN) / STD


def f32(t):
    return t.detach().to(torch.float32).contiguous()


def pair_results(tensors, name, composites, factors_of, x1, x2):
    """A(x), A(x'), R = A A'^T, y and phi(x) per composite into `tensors`; factors_of(entries, x) -> (A, phi)."""
    for spec in composites:
        entries = parse_composite(spec)
        (A1, phi1), (A2, phi2) = factors_of(entries, x1), factors_of(entries, x2)
        R = A1 @ A2.T
        tensors[f"{spec}.A1"], tensors[f"{spec}.A2"], tensors[f"{spec}.R"] = f32(A1), f32(A2), f32(R)
        y = (phi1 @ phi2).detach()
        tensors[f"{spec}.y"] = f32(y.reshape(1))
        tensors[f"{spec}.phi1"] = f32(phi1)
        print(f"{name} {spec}: y={float(y):.6g} sumR={float(R.sum()):.6g}")


def make_case(name, layers, size, h, patch, composites, gen, weights_prefix="layers"):
    kinds = kinds_of(layers)
    x1, x2 = image(gen, *size), image(gen, *size)
    with torch.no_grad():
        d = forward(layers, x1)[-1].numel()
    head = torch.randn(h, d, generator=gen) / math.sqrt(h)
    tensors = {"x1": f32(x1[0]), "x2": f32(x2[0]), "head": f32(head)}
    for i, l in enumerate(layers):
        if isinstance(l, nn.Conv2d):
            tensors[f"{weights_prefix}.{i}.weight"] = f32(l.weight)
            tensors[f"{weights_prefix}.{i}.bias"] = f32(l.bias)
    # Computation in float64 from the float32-rounded parameters and inputs the tests load.
    for l in layers:
        if isinstance(l, nn.Conv2d):
            l.weight.data = l.weight.data.float().double()
            l.bias.data = l.bias.data.float().double()
    x1, x2, head = x1.float().double(), x2.float().double(), head.float().double()
    pair_results(tensors, name, composites, lambda entries, x: factors(layers, kinds, entries, head, x, patch), x1, x2)
    hp, y = hessian_product(layers, head, x1, x2, patch)
    tensors["hessian.R"], tensors["hessian.y"] = f32(hp), f32(y.reshape(1))
    print(f"{name} hessian: y={float(y):.6g} sumHP={float(hp.sum()):.6g}")
    meta = {"composites": json.dumps(composites), "h": str(h), "patch": str(patch),
            "size": json.dumps(list(size)), "layers": str(len(layers))}
    path = os.path.join(OUT, f"{name}.safetensors")
    save_file(tensors, path, metadata=meta)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def splitmix_normals(seed, count):
    """Python twin of SimilarityHead.gaussianMatrix's generator (SplitMix64 + Box-Muller, cos branch)."""
    mask = (1 << 64) - 1
    state, out = seed, []

    def nxt():
        nonlocal state
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    for _ in range(count):
        u1 = (nxt() >> 11) * 2.0**-53
        u2 = (nxt() >> 11) * 2.0**-53
        out.append(math.sqrt(-2 * math.log(1 - u1)) * math.cos(2 * math.pi * u2))
    return out


def onnx_with_output(path, value_name):
    """The ONNX file at path with an extra graph output (an intermediate value), as bytes."""
    import onnx
    m = onnx.load(path)
    m.graph.output.append(onnx.helper.make_tensor_value_info(value_name, onnx.TensorProto.FLOAT, None))
    return m.SerializeToString()


def run_ort(model_bytes, feeds, names):
    import onnxruntime as ort
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return sess.run(names, feeds)


def export(model, example, path):
    torch.onnx.export(model.float().eval(), example.float(), path, dynamo=False, opset_version=13,
                      input_names=["input"], output_names=["output"])


def make_onnx_fixtures(gen, vgg_layers):
    """ONNX import checks against onnxruntime (float32)."""
    import onnx
    torch.set_default_dtype(torch.float32)
    # 1. A small torch model with batch norm (the exporter folds it), dropout, adaptive pooling, a
    #    classifier and softmax.
    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                                          nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.AvgPool2d(2))
            self.pool = nn.AdaptiveAvgPool2d((1, 1))  # exported as GlobalAveragePool
            self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(), nn.Linear(16, 10), nn.ReLU(), nn.Linear(10, 5),
                                            nn.Softmax(dim=1))

        def forward(self, x):
            return self.classifier(self.pool(self.features(x)))

    small = Small()
    bn = small.features[1]
    bn.running_mean.data = torch.randn(8, generator=gen) * 0.1
    bn.running_var.data = torch.rand(8, generator=gen) + 0.5
    bn.weight.data = torch.rand(8, generator=gen) + 0.5
    bn.bias.data = torch.randn(8, generator=gen) * 0.1
    x = torch.rand(1, 3, 32, 32, generator=gen)
    path = os.path.join(OUT, "small_torch.onnx")
    export(small, x, path)
    g = onnx.load(path).graph
    last = [n for n in g.node if n.op_type == "Softmax"][0].input[0]
    (logits,) = run_ort(onnx_with_output(path, last), {"input": x.numpy()}, [last])
    save_file({"input": x[0].contiguous(), "logits": torch.from_numpy(logits[0]).contiguous()},
              os.path.join(OUT, "small_torch_ort.safetensors"))
    # 2. VGG-16 features[:10] exported from torch, the same weights as vgg16_l10.safetensors.
    feats = nn.Sequential(*vgg_layers).float()
    x = torch.rand(1, 3, 32, 32, generator=gen)
    path = os.path.join(OUT, "vgg16_l10.onnx")

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = feats

        def forward(self, x):
            return self.features(x)

    export(Wrap(), x, path)
    (out,) = run_ort(open(path, "rb").read(), {"input": x.numpy()}, ["output"])
    save_file({"input": x[0].contiguous(), "output": torch.from_numpy(out[0]).contiguous()},
              os.path.join(OUT, "vgg16_l10_ort.safetensors"))
    # 3. The real ImageNet VGG-16 (Keras export) at pool5, when the assets were fetched.
    real = os.path.join(os.path.dirname(__file__), "..", "assets", "models", "vgg16_imagenet.onnx")
    if os.path.exists(real):
        u = torch.tensor(splitmix_uniforms(11, 240 * 240 * 3)).float().view(1, 240, 240, 3) * 255 - 128
        pool5 = "functional_1/block5_pool_1/MaxPool2d:0"
        (p5,) = run_ort(onnx_with_output(real, pool5), {"input": u.numpy()}, [pool5])
        save_file({"pool5": torch.from_numpy(p5[0]).contiguous()}, os.path.join(OUT, "vgg16_imagenet_pool5_ort.safetensors"))
        print("real VGG-16 pool5", p5.shape, float(abs(p5).max()))
    else:
        print("assets/models/vgg16_imagenet.onnx missing: run scripts/fetch-assets.sh first")
    torch.set_default_dtype(torch.float64)


def splitmix_uniforms(seed, count):
    mask = (1 << 64) - 1
    state, out = seed, []
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(((z ^ (z >> 31)) >> 11) * 2.0**-53)
    return out


def make_image_fixtures():
    """Small PNGs of every colour type and JPEGs, with Pillow's decoding as the expected RGB."""
    from PIL import Image
    import numpy as np
    d = os.path.join(OUT, "images")
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(5)
    h, w = 7, 9
    rgb8 = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    gray8 = rng.integers(0, 256, (h, w), dtype=np.uint8)
    alpha = rng.integers(0, 256, (h, w), dtype=np.uint8)
    expected = {}

    def save(name, img, **kw):
        path = os.path.join(d, name)
        img.save(path, **kw)
        back = Image.open(path)
        if name.endswith(".png") and back.mode in ("I;16", "I"):
            arr = np.array(back).astype(np.float64) / 65535.0
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        elif name.endswith(".png") and back.mode == "RGB" and kw.get("bits16"):
            arr = None
        else:
            arr = np.array(back.convert("RGB")).astype(np.float64) / 255.0
        expected[name] = torch.from_numpy(arr).float().contiguous()

    save("gray8.png", Image.fromarray(gray8))
    save("gray1.png", Image.fromarray(gray8 > 127).convert("1"))
    save("gray16.png", Image.fromarray((gray8.astype(np.uint16) * 257 + 3).astype(np.uint16)))
    save("graya.png", Image.fromarray(np.dstack([gray8, alpha])))
    save("rgb.png", Image.fromarray(rgb8))
    save("rgba.png", Image.fromarray(np.dstack([rgb8, alpha])))
    pal = Image.fromarray(rgb8).quantize(colors=16)
    pal.info["transparency"] = 3
    save("palette.png", pal, transparency=3)
    big = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    big = (np.array(Image.fromarray(big).resize((12, 10))).repeat(4, 0).repeat(4, 1))  # smooth blocks
    save("baseline.jpg", Image.fromarray(big), quality=90)
    save("progressive.jpg", Image.fromarray(big), quality=90, progressive=True)
    save("gray.jpg", Image.fromarray(np.ascontiguousarray(big[:, :, 0])), quality=90)
    # 16-bit RGB: write with the PNG encoder of numpy-free path (Pillow cannot write 16-bit RGB).
    import struct, zlib
    rgb16 = (rgb8.astype(np.uint32) * 257 + 1).astype(np.uint16)
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))
    def chunk(t, data):
        return struct.pack(">I", len(data)) + t + data + struct.pack(">I", zlib.crc32(t + data) & 0xFFFFFFFF)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    open(os.path.join(d, "rgb16.png"), "wb").write(png)
    expected["rgb16.png"] = torch.from_numpy(rgb16.astype(np.float64) / 65535.0).float().contiguous()
    # Real photos (fetched assets): size and a few pixels as Pillow decodes them.
    assets = os.path.join(os.path.dirname(__file__), "..", "assets", "images")
    for name in ("chelsea.png", "rocket.jpg", "motorcycle_left.png"):
        p = os.path.join(assets, name)
        if os.path.exists(p):
            a = np.array(Image.open(p).convert("RGB"))
            pts = [(0, 0), (a.shape[0] // 2, a.shape[1] // 3), (a.shape[0] - 1, a.shape[1] - 1)]
            vals = [[y, x] + list(a[y, x]) for y, x in pts] + [[a.shape[0], a.shape[1], 0, 0, 0]]
            expected["asset:" + name] = torch.tensor(vals, dtype=torch.float32)
    save_file(expected, os.path.join(OUT, "images.safetensors"))
    print("images:", sorted(expected))


# ---------------------------------------------------------------- graphs (ResNet)
class SplitMix:
    """numpy twin of SplitMix64 (Head.swift): the k-th draw mixes seed + k * gamma."""
    GAMMA = np.uint64(0x9E3779B97F4A7C15)

    def __init__(self, seed):
        self.state = np.uint64(seed)

    def uniforms(self, k):
        with np.errstate(over="ignore"):
            s = self.state + np.arange(1, k + 1, dtype=np.uint64) * self.GAMMA
            self.state = self.state + np.uint64(k) * self.GAMMA
            z = (s ^ (s >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z = z ^ (z >> np.uint64(31))
        return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53

    def normals(self, k):
        u = self.uniforms(2 * k)
        return np.sqrt(-2 * np.log(1 - u[0::2])) * np.cos(2 * np.pi * u[1::2])


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (self.downsample(x) if self.downsample is not None else x))


class TorchvisionResNet(nn.Module):
    """torchvision.models.ResNet (v1.5), written out: same modules, same state_dict names and order.
    (torchvision's wheels pin one torch version each; this keeps the fixtures to torch alone.)"""
    LAYERS = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet34": (BasicBlock, [3, 4, 6, 3]),
              "resnet50": (Bottleneck, [3, 4, 6, 3]), "resnet101": (Bottleneck, [3, 4, 23, 3])}

    def __init__(self, arch, num_classes=1000):
        super().__init__()
        block, layers = self.LAYERS[arch]
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for i, n in enumerate(layers):
            setattr(self, f"layer{i + 1}", self._make_layer(block, 64 << i, n, 1 if i == 0 else 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def seeded_resnet(arch, seed):
    """The ResNet with the weights ResNet.graph(seed:) draws (same generator, same order)."""
    model = TorchvisionResNet(arch).eval()
    rng = SplitMix(seed)
    sd = model.state_dict()
    for name, t in sd.items():
        if name.endswith("num_batches_tracked"):
            continue
        n = t.numel()
        if name.endswith("running_var"):
            v = 0.5 + rng.uniforms(n)
        elif name.endswith("running_mean"):
            v = 0.1 * rng.normals(n)
        elif t.dim() == 1 and name.endswith("weight"):
            v = 0.75 + 0.5 * rng.uniforms(n)
        elif t.dim() == 1:
            v = 0.05 * rng.normals(n)
        else:
            v = rng.normals(n) * math.sqrt(2.0 / (n // t.shape[0]))
        sd[name] = torch.from_numpy(v.astype(np.float32)).view(t.shape).to(t.dtype)
    model.load_state_dict(sd)
    return model


def fold(conv, bn):
    """A float64 conv with the batch norm after it folded in (this script's own folding)."""
    s = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    c = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=True)
    c.weight.data = conv.weight.detach() * s.view(-1, 1, 1, 1)
    b = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels)
    c.bias.data = (b - bn.running_mean) * s + bn.bias.detach()
    return c


def resnet_nodes(model, stages):
    """The ResNet up to layer `stages` as (name, kind, module, inputs, output) nodes, BN folded."""
    nodes = [("conv1", "conv", fold(model.conv1, model.bn1), ["input"], "conv1"),
             ("relu", "relu", None, ["conv1"], "relu"),
             ("maxpool", "maxpool", model.maxpool, ["relu"], "maxpool")]
    x = "maxpool"
    for si in range(1, stages + 1):
        for bi, block in enumerate(getattr(model, f"layer{si}")):
            p = f"layer{si}.{bi}"
            convs = [("conv1", "bn1"), ("conv2", "bn2")] + ([("conv3", "bn3")] if hasattr(block, "conv3") else [])
            y = x
            for k, (c, b) in enumerate(convs):
                nodes.append((f"{p}.{c}", "conv", fold(getattr(block, c), getattr(block, b)), [y], f"{p}.{c}"))
                y = f"{p}.{c}"
                if k < len(convs) - 1:
                    nodes.append((f"{p}.relu{k + 1}", "relu", None, [y], f"{p}.relu{k + 1}"))
                    y = f"{p}.relu{k + 1}"
            short = x
            if block.downsample is not None:
                nodes.append((f"{p}.downsample.0", "conv", fold(block.downsample[0], block.downsample[1]), [x],
                              f"{p}.downsample.0"))
                short = f"{p}.downsample.0"
            nodes.append((f"{p}.add", "add", None, [y, short], f"{p}.add"))
            nodes.append((p, "relu", None, [f"{p}.add"], p))
            x = p
    return nodes, x


def resnet_features(model, x, stages):
    """The module's forward up to layer `stages` (batch norms unfolded)."""
    t = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    for si in range(1, stages + 1):
        t = getattr(model, f"layer{si}")(t)
    return t


def graph_op(kind, mod, a):
    """A node's forward on its input values."""
    if kind == "add":
        return a[0] + a[1]
    if kind == "relu":
        return F.relu(a[0])
    if kind == "max":
        return torch.stack(a).max(0).values
    if kind == "min":
        return torch.stack(a).min(0).values
    if kind == "concat":
        return torch.cat(a, 1)
    return mod(a[0])


def graph_forward(nodes, x):
    vals = {"input": x}
    for name, kind, mod, ins, out in nodes:
        vals[out] = graph_op(kind, mod, [vals[v] for v in ins])
    return vals


def graph_backward(nodes, entries, vals, out, R):
    """LRP over the node list in reverse, relevance summed where a value has several readers."""
    n = R.shape[0]
    convs = [i for i, nd in enumerate(nodes) if nd[1] in ("conv", "linear")]
    rel = {out: R}
    for i in reversed(range(len(nodes))):
        name, kind, mod, ins, o = nodes[i]
        if o not in rel:
            continue
        R = rel.pop(o)
        a = [vals[v].detach().expand(n, *vals[v].shape[1:]) for v in ins]
        if kind == "relu":
            Rin = [R]
        elif kind == "maxpool":
            _, idx = F.max_pool2d(a[0], mod.kernel_size, mod.stride, mod.padding, return_indices=True)
            r = torch.zeros_like(a[0]).flatten(2)
            r.scatter_add_(2, idx.flatten(2), R.flatten(2))
            Rin = [r.view_as(a[0])]
        elif kind in ("max", "min") and rule_for(entries, i, kind, False)[0] != "proportional":
            # Winner-take-all: the first input that gives the extremum takes it all.
            win = torch.stack(a).argmax(0) if kind == "max" else torch.stack(a).argmin(0)
            Rin = [R * (win == k) for k in range(len(a))]
        elif kind in ("add", "max", "min", "concat", "slice", "pad", "mul", "reduce"):
            # Ops without weights, LRP-0 (max/min: proportional, on the sum of the inputs):
            # relevance moves with the values, R_in = x * d(z . s)/dx with s = R / stab(z).
            xs = [t.clone().requires_grad_(True) for t in a]
            z = sum(xs) if kind in ("max", "min") else graph_op(kind, mod, xs)
            rname, arg = rule_for(entries, i, kind, False) if kind == "add" else ("zero", "")
            s = (R / stab(z, float(arg) if rname == "epsilon" else EPS)).detach()
            (z * s).sum().backward()
            Rin = [(t * t.grad).detach() for t in xs]
        else:
            rname, arg = rule_for(entries, i, kind, i == convs[0])
            Rin = [relevance_backward([mod], [kind], [("*", rname, arg)], [a[0][:1]], R)]
        for v, r in zip(ins, Rin):
            rel[v] = rel[v] + r if v in rel else r
    return rel["input"]


def graph_factors(nodes, out, entries, head, x, patch, maps=channel_maps):
    vals = graph_forward(nodes, x)
    feat = vals[out].flatten(1)[0]
    phi = head @ feat
    h = phi.numel()
    s = torch.diag(phi) / stab(phi, EPS)
    Rfeat = (feat * (s @ head)).view(h, *vals[out].shape[1:])
    Rx = graph_backward(nodes, entries, vals, out, Rfeat)
    return pool(maps(Rx), patch).T.contiguous(), phi


def make_resnet_case(gen, arch="resnet18", seed=18, size=64, h=8, patch=8, stages=4,
                     composites=("epsilon-plus-flat", "hp")):
    composites = list(composites)
    model = seeded_resnet(arch, seed).double()
    nodes, out = resnet_nodes(model, stages)
    x1, x2 = image(gen, size, size), image(gen, size, size)
    x1, x2 = x1.float().double(), x2.float().double()
    with torch.no_grad():
        d = graph_forward(nodes, x1)[out].numel()
        # The folded graph against the module's own forward (batch norm in eval mode).
        assert torch.allclose(resnet_features(model, x1, stages), graph_forward(nodes, x1)[out], atol=1e-9), \
            "folding changed the forward"
    head = (torch.randn(h, d, generator=gen) / math.sqrt(h)).float().double()
    tensors = {"x1": f32(x1[0]), "x2": f32(x2[0]), "head": f32(head)}
    pair_results(tensors, arch, composites, lambda entries, x: graph_factors(nodes, out, entries, head, x, patch), x1, x2)

    # The true Hessian x Product through torchvision's module (batch norm unfolded), double backward.
    class Features(nn.Module):
        def forward(self, x):
            return resnet_features(model, x, stages)
    hp, y = hessian_product([Features()], head, x1, x2, patch)
    tensors["hessian.R"], tensors["hessian.y"] = f32(hp), f32(y.reshape(1))
    print(f"{arch} hessian: y={float(y):.6g} sumHP={float(hp.sum()):.6g}")
    meta = {"composites": json.dumps(composites), "h": str(h), "patch": str(patch), "size": json.dumps([size, size]),
            "arch": arch, "seed": str(seed), "cut": f"layer{stages}"}
    path = os.path.join(OUT, f"{arch}_graph.safetensors")
    save_file(tensors, path, metadata=meta)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")
    return model


def make_zennit_case(gen, seed=18, size=64, h=8, patch=8):
    """The seeded ResNet-18 (torchvision's modules), explained by zennit 0.5.1 (the LRP library
    of the field) with its EpsilonPlusFlat composite and ResNetCanonizer (batch norms merged into
    the convolutions, each residual sum a Sum module under its Norm rule), to layer4, in float64.

    Two settings make zennit compute exactly the rules of this project's `epsilon-plus-flat`
    (checked against this script's own recipe: equal to 0 in float64): its stabilizer 1e-9 instead
    of 1e-6, and each batch norm's eps moved into its running variance (same model): zennit's merge
    leaves the batch norm as x / sqrt(1 + eps) rather than the identity, which moved A by 2.3e-3 of
    max |A| at layer1 and 1.5e-3 at layer4 on these weights; the stabilizer alone moves it by about
    2e-6 (printed below)."""
    # zennit's canonizer recognizes torchvision's block classes; torchvision's wheels pin a CUDA
    # torch build, so its module is stood in by this script's classes (same modules, same forward).
    import types
    stand_in = types.ModuleType("torchvision.models.resnet")
    stand_in.BasicBlock, stand_in.Bottleneck = BasicBlock, Bottleneck
    for name in ("torchvision", "torchvision.models"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["torchvision.models.resnet"] = stand_in
    from zennit.composites import EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer
    tv = seeded_resnet("resnet18", seed).double().eval()
    for m in tv.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.data += m.eps
            m.eps = 0.0
    features = nn.Sequential(tv.conv1, tv.bn1, tv.relu, tv.maxpool, tv.layer1, tv.layer2, tv.layer3, tv.layer4)
    x1, x2 = image(gen, size, size).float().double(), image(gen, size, size).float().double()
    with torch.no_grad():
        d = features(x1).numel()
    head = (torch.randn(h, d, generator=gen) / math.sqrt(h)).float().double()
    def factors_of(x, composite):
        with torch.no_grad():
            feat = features(x)
        phi = head @ feat.flatten()
        s = torch.diag(phi) / stab(phi, EPS)
        Rfeat = (feat.flatten() * (s @ head)).view(h, *feat.shape[1:])  # LRP-0 through the bias-free head
        xin = x.expand(h, *x.shape[1:]).clone().requires_grad_(True)
        with composite.context(features) as modified:
            out = modified(xin)
            (R,) = torch.autograd.grad(out, xin, grad_outputs=Rfeat)
        return pool(R.sum(1), patch).T.contiguous(), phi

    exact = EpsilonPlusFlat(stabilizer=1e-9, canonizers=[ResNetCanonizer()])
    (A1, phi1), (A2, phi2) = factors_of(x1, exact), factors_of(x2, exact)
    model = seeded_resnet("resnet18", seed).double()
    nodes, out = resnet_nodes(model, 4)
    mine, _ = graph_factors(nodes, out, parse_composite("epsilon-plus-flat"), head, x1, patch)
    print(f"zennit vs script recipe: max |dA| / max |A| = {float((mine - A1).abs().max() / A1.abs().max()):.3g}")
    default, _ = factors_of(x1, EpsilonPlusFlat(canonizers=[ResNetCanonizer()]))
    print(f"zennit with its default stabilizer 1e-6: max |dA| / max |A| = {float((default - A1).abs().max() / A1.abs().max()):.3g}")
    tensors = {"x1": f32(x1[0]), "x2": f32(x2[0]), "head": f32(head), "A1": f32(A1), "A2": f32(A2),
               "R": f32(A1 @ A2.T), "y": f32((phi1 @ phi2).reshape(1)), "phi1": f32(phi1)}
    print(f"zennit resnet18: y={float(phi1 @ phi2):.6g} sumR={float((A1 @ A2.T).sum()):.6g}")
    meta = {"composite": "epsilon-plus-flat", "h": str(h), "patch": str(patch), "size": str(size), "seed": str(seed),
            "cut": "layer4", "zennit": "0.5.1"}
    path = os.path.join(OUT, "resnet18_zennit.safetensors")
    save_file(tensors, path, metadata=meta)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def make_resnet_onnx(arch, seed, size, gen):
    """torch.onnx.export of the seeded ResNet (batch norms kept as nodes, so initializers keep the
    parameter names), checked by onnxruntime at every stage and the logits; the committed file has
    its initializers emptied (the test draws the same weights), the outputs go to a safetensors."""
    import onnx
    torch.set_default_dtype(torch.float32)
    model = seeded_resnet(arch, seed).float().eval()
    x = torch.rand(1, 3, size, size, generator=gen)
    path = os.path.join(OUT, f"{arch}_noweights.onnx")
    torch.onnx.export(model, x, path, dynamo=False, opset_version=13, input_names=["input"], output_names=["output"],
                      do_constant_folding=False)
    m = onnx.load(path)
    stages = {}
    for n in m.graph.node:  # the block outputs: /layerS/layerS.B/relu_1/Relu (the last one of each stage)
        parts = n.name.split("/")
        if n.op_type == "Relu" and len(parts) >= 3 and parts[1].startswith("layer"):
            stages[parts[1]] = n.output[0]
    names = [stages[k] for k in sorted(stages)] + ["output"]
    for v in names[:-1]:
        m.graph.output.append(onnx.helper.make_tensor_value_info(v, onnx.TensorProto.FLOAT, None))
    outs = run_ort(m.SerializeToString(), {"input": x.numpy()}, names)
    tensors = {"input": x[0].contiguous()}
    for k, v in zip(sorted(stages) + ["logits"], outs):
        tensors[k] = torch.from_numpy(v[0]).contiguous()
    save_file(tensors, os.path.join(OUT, f"{arch}_ort.safetensors"), metadata={"seed": str(seed)})
    m = onnx.load(path)
    for t in m.graph.initializer:
        t.ClearField("raw_data")
        t.ClearField("float_data")
    onnx.save(m, path)
    print(f"{arch}: ONNX without weights {os.path.getsize(path)} bytes, stages {sorted(stages)}")
    torch.set_default_dtype(torch.float64)


def export_checked(model, x, path, name):
    """torch.onnx.export of a float64 model in float32 (weights inside), run by onnxruntime and
    checked against torch; returns onnxruntime's output for x (batch dropped)."""
    import onnx
    torch.set_default_dtype(torch.float32)
    m32 = model.float().eval()
    torch.onnx.export(m32, x.float(), path, dynamo=False, opset_version=13, input_names=["input"],
                      output_names=["output"])
    (ort_out,) = run_ort(open(path, "rb").read(), {"input": x.float().numpy()}, ["output"])
    assert np.allclose(ort_out, model(x.float()).detach().numpy(), atol=1e-5), "onnxruntime != torch"
    torch.set_default_dtype(torch.float64)
    model.double()
    print(f"{name} ONNX nodes:", [n.op_type for n in onnx.load(path).graph.node])
    return torch.from_numpy(ort_out[0]).contiguous()


class OpsGraph(nn.Module):
    """The ops of general graphs beyond ResNet's: Max, Min at a shift (Slice then Pad: the tables
    model's bigram of two maps one step apart), Concat, Mul by a constant, ReduceSum and ReduceMean
    over channels, a max-pool, a dilated grouped convolution and a depthwise one; biases nonzero."""
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.conv3 = nn.Conv2d(16, 16, (3, 5), padding=(1, 2), groups=16)

    def forward(self, x):
        a = F.relu(self.conv1(x))
        b = F.relu(self.conv2(a))
        c = torch.maximum(a, b)
        d = torch.minimum(b, F.pad(a[:, :, :, 2:], (0, 2)))  # a two columns to the left, zeros at the right
        e = torch.cat([c, d], 1) * 0.5
        g = F.relu(self.conv3(e))
        return F.max_pool2d(torch.cat([g.sum(1, keepdim=True), c.mean(1, keepdim=True)], 1), 2)

    def nodes(self):
        """The same forward as (name, kind, module, inputs, output) nodes for graph_backward."""
        return [("conv1", "conv", self.conv1, ["input"], "conv1"), ("relu1", "relu", None, ["conv1"], "a"),
                ("conv2", "conv", self.conv2, ["a"], "conv2"), ("relu2", "relu", None, ["conv2"], "b"),
                ("max", "max", None, ["a", "b"], "c"),
                ("slice", "slice", lambda t: t[:, :, :, 2:], ["a"], "sliced"),
                ("pad", "pad", lambda t: F.pad(t, (0, 2)), ["sliced"], "shifted"),
                ("min", "min", None, ["b", "shifted"], "d"),
                ("concat", "concat", None, ["c", "d"], "cd"), ("mul", "mul", lambda t: t * 0.5, ["cd"], "e"),
                ("conv3", "conv", self.conv3, ["e"], "conv3"), ("relu3", "relu", None, ["conv3"], "g"),
                ("sum", "reduce", lambda t: t.sum(1, keepdim=True), ["g"], "gs"),
                ("mean", "reduce", lambda t: t.mean(1, keepdim=True), ["c"], "cm"),
                ("concat2", "concat", None, ["gs", "cm"], "sm"),
                ("pool", "maxpool", nn.MaxPool2d(2), ["sm"], "out")]


def make_ops_case(gen, size=(20, 22), h=6, patch=4,
                  composites=("epsilon-gamma-box", "hp", "first:zb;conv:gamma=0.25;max:proportional;min:proportional")):
    """The ops graph exported to ONNX (weights inside, 7 KB) and explained here by graph_backward on
    its node list, in float64; the forward checked against the module and against onnxruntime."""
    composites = list(composites)
    model = OpsGraph()
    randomize([model.conv1, model.conv2, model.conv3], gen)
    model = model.float().double()
    nodes = model.nodes()
    x1, x2 = image(gen, *size).float().double(), image(gen, *size).float().double()
    with torch.no_grad():
        assert torch.allclose(model(x1), graph_forward(nodes, x1)["out"], atol=1e-12), "node list != module"
        d = model(x1).numel()
    head = (torch.randn(h, d, generator=gen) / math.sqrt(h)).float().double()
    tensors = {"x1": f32(x1[0]), "x2": f32(x2[0]), "head": f32(head)}
    pair_results(tensors, "ops", composites, lambda entries, x: graph_factors(nodes, "out", entries, head, x, patch), x1, x2)
    hp, y = hessian_product([model], head, x1, x2, patch)
    tensors["hessian.R"], tensors["hessian.y"] = f32(hp), f32(y.reshape(1))
    print(f"ops hessian: y={float(y):.6g} sumHP={float(hp.sum()):.6g}")
    path = os.path.join(OUT, "ops_graph.onnx")
    tensors["ort.output"] = export_checked(model, x1, path, "ops")
    meta = {"composites": json.dumps(composites), "h": str(h), "patch": str(patch), "size": json.dumps(list(size))}
    out = os.path.join(OUT, "ops_graph.safetensors")
    save_file(tensors, out, metadata=meta)
    print(f"wrote {out} ({os.path.getsize(out)} bytes), {path} ({os.path.getsize(path)} bytes)")


class TokenNet(nn.Module):
    """A model of a sequence (1, T, D): linear layers on every token, a residual sum that reads the
    input again, and two poolings over the tokens (mean, and a sum of a scaled branch) concatenated
    into one vector; biases nonzero."""
    def __init__(self, d=12, hidden=16, out=10):
        super().__init__()
        self.lin1, self.lin2, self.lin3 = nn.Linear(d, hidden), nn.Linear(hidden, d), nn.Linear(d, out)

    def forward(self, x):
        a = F.relu(self.lin1(x))
        b = F.relu(self.lin2(a) + x)
        c = F.relu(self.lin3(b))
        return torch.cat([c.mean(1), (b * 0.5).sum(1)], 1)

    def nodes(self):
        return [("lin1", "linear", self.lin1, ["input"], "l1"), ("relu1", "relu", None, ["l1"], "a"),
                ("lin2", "linear", self.lin2, ["a"], "l2"), ("add", "add", None, ["l2", "input"], "s"),
                ("relu2", "relu", None, ["s"], "b"), ("lin3", "linear", self.lin3, ["b"], "l3"),
                ("relu3", "relu", None, ["l3"], "c"), ("mean", "reduce", lambda t: t.mean(1), ["c"], "cm"),
                ("mul", "mul", lambda t: t * 0.5, ["b"], "bh"), ("sum", "reduce", lambda t: t.sum(1), ["bh"], "bs"),
                ("concat", "concat", None, ["cm", "bs"], "out")]


def make_tokens_case(gen, tokens=9, d=12, h=5, patch=2,
                     composites=("epsilon-plus-flat", "hp", "first:flat;linear:gamma=0.25;add:epsilon=0.01")):
    """The token model explained in float64 by graph_backward; the Hessian x Product by double
    backward; exported to ONNX (weights inside) and run by onnxruntime."""
    composites = list(composites)
    model = TokenNet(d)
    for l in (model.lin1, model.lin2, model.lin3):
        l.weight.data = torch.randn(l.weight.shape, generator=gen) * math.sqrt(2 / l.in_features)
        l.bias.data = torch.randn(l.bias.shape, generator=gen) * 0.1
    model = model.float().double()
    nodes = model.nodes()
    x1 = torch.randn(1, tokens, d, generator=gen).float().double()
    x2 = torch.randn(1, tokens + 2, d, generator=gen).float().double()
    with torch.no_grad():
        assert torch.allclose(model(x1), graph_forward(nodes, x1)["out"], atol=1e-12), "node list != module"
        dim = model(x1).numel()
    head = (torch.randn(h, dim, generator=gen) / math.sqrt(h)).float().double()
    tensors = {"x1": f32(x1[0]), "x2": f32(x2[0]), "head": f32(head)}
    for name, l in (("lin1", model.lin1), ("lin2", model.lin2), ("lin3", model.lin3)):
        tensors[f"{name}.weight"], tensors[f"{name}.bias"] = f32(l.weight), f32(l.bias)
    pair_results(tensors, "tokens", composites,
                 lambda entries, x: graph_factors(nodes, "out", entries, head, x, patch, maps=token_maps), x1, x2)
    hp, y = hessian_product([model], head, x1, x2, patch, maps=token_maps)
    tensors["hessian.R"], tensors["hessian.y"] = f32(hp), f32(y.reshape(1))
    print(f"tokens hessian: y={float(y):.6g} sumHP={float(hp.sum()):.6g}")
    path = os.path.join(OUT, "tokens.onnx")
    tensors["ort.output"] = export_checked(model, x1, path, "tokens")
    meta = {"composites": json.dumps(composites), "h": str(h), "patch": str(patch)}
    out = os.path.join(OUT, "tokens.safetensors")
    save_file(tensors, out, metadata=meta)
    print(f"wrote {out} ({os.path.getsize(out)} bytes), {path} ({os.path.getsize(path)} bytes)")


def make_unsupported_tokens_onnx():
    """A tiny ONNX graph of a (1, 9, 12) sequence whose branches need what a sequence cannot do
    here: a Flatten (token-major, against the features-major storage), a Concat along the tokens,
    a ReduceSum over the features without keepdims. The ReLU before them is fine."""
    import onnx
    from onnx import TensorProto, helper
    nodes = [
        helper.make_node("Relu", ["input"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten", axis=1),
        helper.make_node("Concat", ["r", "r"], ["c"], name="concat_tokens", axis=1),
        helper.make_node("ReduceSum", ["r", "axes"], ["s"], name="sum_features", keepdims=0),
    ]
    inits = [helper.make_tensor("axes", TensorProto.INT64, [1], [2])]
    graph = helper.make_graph(nodes, "unsupported_tokens",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 9, 12])],
                              [helper.make_tensor_value_info("r", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = os.path.join(OUT, "tokens_unsupported.onnx")
    onnx.save(m, path)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def make_unsupported_ops_onnx():
    """A tiny ONNX graph (no weights) whose second branch needs ops the importer refuses: Pad in
    reflect mode, a Slice with step 2, a Max with a constant (a clamp). The first branch is fine."""
    import onnx
    from onnx import TensorProto, helper
    i64 = lambda name, v: helper.make_tensor(name, TensorProto.INT64, [len(v)], v)
    nodes = [
        helper.make_node("Relu", ["input"], ["r"], name="relu"),
        helper.make_node("Pad", ["r", "pads"], ["p"], name="reflect_pad", mode="reflect"),
        helper.make_node("Slice", ["r", "s0", "s1", "s2", "s3"], ["s"], name="strided_slice"),
        helper.make_node("Max", ["r", "zero"], ["m"], name="clamp"),
        helper.make_node("ReduceSum", ["r", "axes"], ["sum"], name="sum", keepdims=1),
    ]
    inits = [i64("pads", [0, 0, 1, 1, 0, 0, 1, 1]), i64("s0", [0]), i64("s1", [8]), i64("s2", [3]), i64("s3", [2]),
             helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]), i64("axes", [1])]
    graph = helper.make_graph(nodes, "unsupported", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("sum", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = os.path.join(OUT, "ops_unsupported.onnx")
    onnx.save(m, path)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def make_graph_fixtures():
    gen = torch.Generator().manual_seed(20261203)
    make_resnet_case(gen)
    make_resnet_onnx("resnet18", 18, 64, gen)
    make_resnet_onnx("resnet50", 50, 64, gen)


def main():
    os.makedirs(OUT, exist_ok=True)
    if "--only" in sys.argv and sys.argv[sys.argv.index("--only") + 1] == "graphs":
        make_graph_fixtures()
        return 0
    if "--only" in sys.argv and sys.argv[sys.argv.index("--only") + 1] == "zennit":
        make_zennit_case(torch.Generator().manual_seed(20261206))
        return 0
    if "--only" in sys.argv and sys.argv[sys.argv.index("--only") + 1] == "tokens":
        make_tokens_case(torch.Generator().manual_seed(20261205))
        make_unsupported_tokens_onnx()
        return 0
    if "--only" in sys.argv and sys.argv[sys.argv.index("--only") + 1] == "ops":
        make_ops_case(torch.Generator().manual_seed(20261204))
        make_unsupported_ops_onnx()
        return 0
    make_image_fixtures()
    gen = torch.Generator().manual_seed(20260101)
    small = small_net()
    randomize(small, gen)
    make_case("smallnet", small, (29, 27), 10, 4,
              ["paper-vgg", "hp", "first:flat;conv:alphabeta=2,1", "0:zb;1-:epsilon=0.1", "first:wsquare;conv:zplus"], gen)
    vgg = vgg16_features()[:10]
    randomize(vgg, gen)
    make_case("vgg16_l10", vgg, (32, 32), 12, 4, ["paper-vgg", "hp"], gen, weights_prefix="features")
    # The projection generator, and reduced-precision safetensors decoding.
    g = torch.tensor(splitmix_normals(7, 4 * 6)).view(4, 6) / math.sqrt(4)
    probe = torch.randn(37, generator=gen) * 3
    save_file({"gaussian_seed7_h4_d6": f32(g), "probe_bf16": probe.to(torch.bfloat16),
               "probe_bf16_as_f32": probe.to(torch.bfloat16).float(), "probe_f16": probe.to(torch.float16),
               "probe_f16_as_f32": probe.to(torch.float16).float()}, os.path.join(OUT, "misc.safetensors"))
    make_onnx_fixtures(gen, vgg)
    make_graph_fixtures()
    make_ops_case(torch.Generator().manual_seed(20261204))
    make_unsupported_ops_onnx()
    make_tokens_case(torch.Generator().manual_seed(20261205))
    make_unsupported_tokens_onnx()
    make_zennit_case(torch.Generator().manual_seed(20261206))
    print("torch", torch.__version__)


if __name__ == "__main__":
    sys.exit(main())
