#!/usr/bin/env python3
"""PyTorch peers for the BiLRP benchmark: the same explanation as bilrp-bench, two ways.

batched  all h maps as one batch through the modified gradients (the issue's "PyTorch batched"):
         one forward (batch 1), then the rule's modified gradient of each layer written out, as
         autograd would compute it, for the h maps at once: s = R / stab(z_rho), c = conv^T(s) as a
         forward convolution with the flipped, transposed weight (mkldnn, channels-last), R_in =
         a * c; max-pools by max_unpool2d.
blocked  the same in blocks of 16 maps: faster here and far leaner. Measured on this machine
         (VGG-16, 128 x 128, 2 threads, seconds per pair): blocks of 16 8.9 s, of 25 / 50 / 100
         9.3 / 11.0 / 14.4 s; conv_transpose2d instead of the flipped forward 9.1 s; without
         channels-last 11.7 s; autograd's batched backward (torch.autograd.grad(...,
         is_grads_batched=True) over the gradient trick z_rho * (z / z_rho).detach()), which vmap
         runs as one convolution backward per map, 14-20 s.
authors  the authors' style: one forward and one backward per output phi_m, batch 1, through that
         gradient trick.

Both use the paper-vgg rules (z^B at layer 0, gamma 0.5 / 0.25 / 0.1 / 0 by layer index, LRP-0
head, winner-take-all max-pool), sum-pooled 8 x 8 patches, and R = A A'^T.

Driven by bilrp-bench over stdin, one command per line, one JSON line back:
  check KIND        computes R (KIND: batched, blocked, authors), compares with the R bilrp wrote
                    (max |diff| / max |R|)
  time KIND         seconds for one pair
  rss               peak resident memory of this process (KiB)
  quit
"""
import json
import os
import resource
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file


def serve(d, pair, ready=None):
    """Answers bilrp-bench's commands on stdin (the protocol above), one JSON line each; pair(kind)
    computes R (a tensor or an array), compared with the R_ours.npy bilrp wrote into d."""
    print(json.dumps({"ready": True, **(ready or {})}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "check":
            R, ours = pair(cmd[1]), np.load(os.path.join(d, "R_ours.npy"))
            R = R.detach().numpy() if isinstance(R, torch.Tensor) else R
            print(json.dumps({"diff": float(np.abs(R - ours).max() / np.abs(ours).max())}), flush=True)
        elif cmd[0] == "time":
            t = time.perf_counter()
            pair(cmd[1])
            print(json.dumps({"seconds": time.perf_counter() - t}), flush=True)
        elif cmd[0] == "rss":
            print(json.dumps({"rss_kib": peak_rss_kib()}), flush=True)
        elif cmd[0] == "quit":
            print(json.dumps({"bye": True}), flush=True)
            return


def peak_rss_kib():
    """Peak resident memory of this process: VmHWM, not ru_maxrss (which Linux carries across
    execve, so a child of a large parent would report the parent's peak)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


EPS = 1e-9


def stab(z):
    return z + EPS * torch.where(z >= 0, 1.0, -1.0)


def gamma_for(i):
    if i <= 10:
        return 0.5
    if i <= 17:
        return 0.25
    if i <= 24:
        return 0.1
    return 0.0


class Model:
    def __init__(self, d, patch):
        w = load_file(os.path.join(d, "model.safetensors"))
        self.layers = []
        i = 0
        while f"features.{i}.weight" in w or i < 31:
            if f"features.{i}.weight" in w:
                conv = nn.Conv2d(w[f"features.{i}.weight"].shape[1], w[f"features.{i}.weight"].shape[0], 3, padding=1)
                conv.weight.data = w[f"features.{i}.weight"]
                conv.bias.data = w[f"features.{i}.bias"]
                self.layers += [conv, nn.ReLU()]
                i += 2
            else:
                self.layers.append(nn.MaxPool2d(2))
                i += 1
        self.layers = self.layers[:31]
        self.head = torch.from_numpy(np.load(os.path.join(d, "projection.npy")))
        b = np.load(os.path.join(d, "bounds.npy"))
        self.low, self.high = torch.from_numpy(b[0]).view(1, 3, 1, 1), torch.from_numpy(b[1]).view(1, 3, 1, 1)
        self.patch = patch
        for p in self.parameters():
            p.requires_grad_(False)
        # rho(W) once per model, as a fair peer should.
        self.mod = {}
        for i, l in enumerate(self.layers):
            if isinstance(l, nn.Conv2d) and i > 0:
                g = gamma_for(i)
                self.mod[i] = (l.weight + g * l.weight.clamp(min=0), l.bias + g * l.bias.clamp(min=0))
        w0 = self.layers[0].weight
        self.wpos, self.wneg = w0.clamp(min=0), w0.clamp(max=0)
        # conv^T of a 3x3 / stride 1 / padding 1 layer is the forward convolution with this weight.
        self.flipped = {i: w.transpose(0, 1).flip(2, 3).contiguous() for i, (w, _) in self.mod.items()}

    def parameters(self):
        for l in self.layers:
            yield from l.parameters()

    def forward(self, x):
        """phi(x) with modified gradients; returns phi and the leaves (x, l, h) of the z^B rule."""
        x = x.clone().requires_grad_(True)
        lo = self.low.expand_as(x).clone().requires_grad_(True)
        hi = self.high.expand_as(x).clone().requires_grad_(True)
        a = x
        for i, l in enumerate(self.layers):
            if isinstance(l, nn.Conv2d):
                z = F.conv2d(a, l.weight, l.bias, padding=1)
                if i == 0:
                    zr = F.conv2d(a, l.weight, None, padding=1) - F.conv2d(lo, self.wpos, None, padding=1) \
                        - F.conv2d(hi, self.wneg, None, padding=1)
                else:
                    w, b = self.mod[i]
                    zr = F.conv2d(a, w, b, padding=1)
                a = zr * (z / stab(zr)).detach()
            else:
                a = l(a)
        phi = a.flatten(1) @ self.head.T
        return phi[0], (x, lo, hi)

    def pool(self, leaves, grads):
        maps = sum(v * g for v, g in zip(leaves, grads)).sum(1)  # (n, H, W)
        n, H, W = maps.shape
        p = self.patch
        return maps.view(n, H // p, p, W // p, p).sum((2, 4)).reshape(n, -1).T  # (P, n)

    @torch.no_grad()
    def factors_batched(self, x, block=None):
        cl = torch.channels_last
        a, saved = x, []
        for i, l in enumerate(self.layers):
            if isinstance(l, nn.Conv2d):
                z = F.conv2d(a, l.weight, l.bias, padding=1)
                if i == 0:
                    zr = F.conv2d(a, l.weight, None, padding=1) - F.conv2d(self.low.expand_as(x), self.wpos, None, padding=1) \
                        - F.conv2d(self.high.expand_as(x), self.wneg, None, padding=1)
                    saved.append(("zb", a, 1 / stab(zr)))
                else:
                    w, b = self.mod[i]
                    zr = F.conv2d(a, w, b, padding=1)
                    saved.append(("conv", a.contiguous(memory_format=cl), (1 / stab(zr)).contiguous(memory_format=cl),
                                  self.flipped[i]))
                a = z
            elif isinstance(l, nn.ReLU):
                a = F.relu(a)
            else:
                out, idx = F.max_pool2d(a, 2, return_indices=True)
                saved.append(("pool", idx, a.shape[2:]))
                a = out
        h = self.head.shape[0]
        block = block or h
        maps = []
        for m0 in range(0, h, block):
            R = (a.flatten(1) * self.head[m0:m0 + block]).view(-1, *a.shape[1:])  # LRP-0 head
            for kind, *t in reversed(saved):
                if kind == "pool":
                    idx, size = t
                    R = F.max_unpool2d(R, idx.expand(R.shape[0], -1, -1, -1), 2, output_size=size)
                elif kind == "conv":
                    ain, rz, wf = t
                    R = ain * F.conv2d((R * rz).contiguous(memory_format=cl), wf, padding=1)
                else:
                    ain, rz = t
                    s = R * rz
                    R = ain * F.conv_transpose2d(s, self.layers[0].weight, padding=1) \
                        - self.low * F.conv_transpose2d(s, self.wpos, padding=1) \
                        - self.high * F.conv_transpose2d(s, self.wneg, padding=1)
            maps.append(R.sum(1))
        maps = torch.cat(maps)
        n, H, W = maps.shape
        p = self.patch
        return maps.view(n, H // p, p, W // p, p).sum((2, 4)).reshape(n, -1).T

    def factors_authors(self, x):
        cols = []
        h = self.head.shape[0]
        for m in range(h):
            phi, leaves = self.forward(x)
            grads = torch.autograd.grad(phi[m], leaves)
            cols.append(self.pool([v.detach() for v in leaves], grads)[:, 0])
        return torch.stack(cols, 1)


def main():
    d, patch, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(threads)
    model = Model(d, patch)
    x1 = torch.from_numpy(np.load(os.path.join(d, "x1.npy")))[None]
    x2 = torch.from_numpy(np.load(os.path.join(d, "x2.npy")))[None]

    def pair(kind):
        f = {"batched": model.factors_batched, "blocked": lambda x: model.factors_batched(x, block=16),
             "authors": model.factors_authors}[kind]
        return f(x1) @ f(x2).T

    serve(d, pair, {"torch": torch.__version__, "threads": torch.get_num_threads()})

if __name__ == "__main__":
    main()
