#!/usr/bin/env python3
"""PyTorch peer for the ResNet row of the BiLRP benchmark: the same explanation as bilrp-bench's
ResNet-50 workload (cut at layer4, Gaussian head, epsilon-gamma-box, 8 x 8 patches, R = A A'^T).

batched  all h maps as one batch through the modified gradients: one forward (batch 1) keeping
         each rule's 1 / stab(z_rho), then per node in reverse: a convolution's c = conv^T(s) by
         conv_transpose2d with the rule's weight and R_in = a * c; a residual sum's share a_k / stab(sum);
         max-pool by a scatter-add to the winners (its 3 x 3 windows overlap); ReLU passes.
blocked  the same in blocks of 16 maps.

Batch norms are folded into the convolutions before (as zennit's canonizer and bilrp do). Rules
(rules.txt in the directory): epsilon-plus-flat, flat on conv1 and z+ on every other convolution
(whose inputs are all ReLU outputs, so z+ is one term: a w+ with b+), or epsilon-gamma-box, z^B on
conv1 and gamma = 0.25 elsewhere; the sum's relevance split in proportion to its summands
(zennit's Norm), LRP-0 on the bias-free head.

Driven by bilrp-bench over stdin with the protocol of torch_bilrp.py:
  check KIND / time KIND / rss / quit
"""
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from torch_bilrp import serve

EPS = 1e-9
GAMMA = 0.25
BLOCKS = {"resnet50": [3, 4, 6, 3]}


def stab(z):
    return z + EPS * torch.where(z >= 0, 1.0, -1.0)


class ResNetLRP:
    def __init__(self, d, patch, arch="resnet50"):
        w = load_file(os.path.join(d, "model.safetensors"))
        self.rules = open(os.path.join(d, "rules.txt")).read().strip()
        assert self.rules in ("epsilon-plus-flat", "epsilon-gamma-box"), self.rules
        plus = self.rules == "epsilon-plus-flat"
        self.patch = patch
        self.head = torch.from_numpy(np.load(os.path.join(d, "projection.npy")))
        b = np.load(os.path.join(d, "bounds.npy"))
        self.low, self.high = torch.from_numpy(b[0]).view(1, 3, 1, 1), torch.from_numpy(b[1]).view(1, 3, 1, 1)

        def folded(conv, bn, stride, padding):
            s = w[f"{bn}.weight"] / torch.sqrt(w[f"{bn}.running_var"] + 1e-5)
            weight = w[f"{conv}.weight"] * s.view(-1, 1, 1, 1)
            bias = w[f"{bn}.bias"] - w[f"{bn}.running_mean"] * s
            if plus:
                wr, br = weight.clamp(min=0), bias.clamp(min=0)
            else:
                wr, br = weight + GAMMA * weight.clamp(min=0), bias + GAMMA * bias.clamp(min=0)
            return {"w": weight, "b": bias, "stride": stride, "padding": padding, "wr": wr, "br": br}

        # (kind, params, inputs, output) in topological order
        n = [("conv", folded("conv1", "bn1", 2, 3), ["x"], "c1"), ("relu", None, ["c1"], "r1"),
             ("maxpool", None, ["r1"], "mp")]
        x = "mp"
        for si, count in enumerate(BLOCKS[arch]):
            for bi in range(count):
                p = f"layer{si + 1}.{bi}"
                stride = 2 if bi == 0 and si > 0 else 1
                n.append(("conv", folded(f"{p}.conv1", f"{p}.bn1", 1, 0), [x], f"{p}.c1"))
                n.append(("relu", None, [f"{p}.c1"], f"{p}.r1"))
                n.append(("conv", folded(f"{p}.conv2", f"{p}.bn2", stride, 1), [f"{p}.r1"], f"{p}.c2"))
                n.append(("relu", None, [f"{p}.c2"], f"{p}.r2"))
                n.append(("conv", folded(f"{p}.conv3", f"{p}.bn3", 1, 0), [f"{p}.r2"], f"{p}.c3"))
                short = x
                if bi == 0:
                    n.append(("conv", folded(f"{p}.downsample.0", f"{p}.downsample.1", stride, 0), [x], f"{p}.ds"))
                    short = f"{p}.ds"
                n.append(("add", None, [f"{p}.c3", short], f"{p}.sum"))
                n.append(("relu", None, [f"{p}.sum"], p))
                x = p
        self.nodes, self.out = n, x
        first = n[0][1]
        first["wpos"], first["wneg"] = first["w"].clamp(min=0), first["w"].clamp(max=0)
        first["ones"] = torch.ones_like(first["w"])

    @torch.no_grad()
    def forward(self, x):
        vals, saved = {"x": x}, {}
        for i, (kind, p, ins, out) in enumerate(self.nodes):
            a = vals[ins[0]]
            if kind == "conv":
                y = F.conv2d(a, p["w"], p["b"], p["stride"], p["padding"])
                if i == 0 and self.rules == "epsilon-plus-flat":
                    zr = F.conv2d(torch.ones_like(a), p["ones"], None, p["stride"], p["padding"])
                elif i == 0:
                    zr = (F.conv2d(a, p["w"], None, p["stride"], p["padding"])
                          - F.conv2d(self.low.expand_as(a), p["wpos"], None, p["stride"], p["padding"])
                          - F.conv2d(self.high.expand_as(a), p["wneg"], None, p["stride"], p["padding"]))
                else:
                    zr = F.conv2d(a, p["wr"], p["br"], p["stride"], p["padding"])
                saved[i] = (a, 1 / stab(zr))
            elif kind == "relu":
                y = F.relu(a)
            elif kind == "maxpool":
                y, idx = F.max_pool2d(a, 3, 2, 1, return_indices=True)
                saved[i] = (a.shape, idx)
            else:
                y = a + vals[ins[1]]
                saved[i] = (1 / stab(y),)
            vals[out] = y
        return vals, saved

    @staticmethod
    def conv_t(s, weight, p, in_shape):
        k = weight.shape[2]
        op = in_shape[-1] - ((s.shape[-1] - 1) * p["stride"] - 2 * p["padding"] + k)
        return F.conv_transpose2d(s, weight, None, p["stride"], p["padding"], output_padding=op)

    @torch.no_grad()
    def factors(self, x, block=None):
        vals, saved = self.forward(x)
        feat = vals[self.out].flatten(1)[0]
        phi = self.head @ feat
        h = phi.numel()
        block = block or h
        cols = []
        for m0 in range(0, h, block):
            m = torch.arange(m0, min(h, m0 + block))
            start = (self.head[m] * (phi[m] / stab(phi[m])).unsqueeze(1)) * feat.unsqueeze(0)
            rel = {self.out: start.view(len(m), *vals[self.out].shape[1:])}
            for i in reversed(range(len(self.nodes))):
                kind, p, ins, out = self.nodes[i]
                if out not in rel:
                    continue
                R = rel.pop(out)
                if kind == "relu":
                    ups = [R]
                elif kind == "maxpool":
                    # Overlapping windows share winners: scatter-add (max_unpool2d would keep one window's).
                    shape, idx = saved[i]
                    r = torch.zeros(R.shape[0], *shape[1:]).flatten(2)
                    r.scatter_add_(2, idx.expand(R.shape[0], -1, -1, -1).flatten(2), R.flatten(2))
                    ups = [r.view(R.shape[0], *shape[1:])]
                elif kind == "add":
                    s = R * saved[i][0]
                    ups = [vals[ins[0]] * s, vals[ins[1]] * s]
                else:
                    a, inv = saved[i]
                    s = R * inv
                    if i == 0 and self.rules == "epsilon-plus-flat":
                        ups = [self.conv_t(s, p["ones"], p, a.shape)]
                    elif i == 0:
                        ups = [a * self.conv_t(s, p["w"], p, a.shape) - self.low * self.conv_t(s, p["wpos"], p, a.shape)
                               - self.high * self.conv_t(s, p["wneg"], p, a.shape)]
                    else:
                        ups = [a * self.conv_t(s, p["wr"], p, a.shape)]
                for v, r in zip(ins, ups):
                    rel[v] = rel[v] + r if v in rel else r
            maps = rel["x"].sum(1)
            n, H, W = maps.shape
            q = self.patch
            cols.append(maps.view(n, H // q, q, W // q, q).sum((2, 4)).reshape(n, -1).T)
        return torch.cat(cols, 1)

    def pair(self, x1, x2, block=None):
        return self.factors(x1, block) @ self.factors(x2, block).T


def main():
    d, patch, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(threads)
    model = ResNetLRP(d, patch)
    x1 = torch.from_numpy(np.load(os.path.join(d, "x1.npy")))[None]
    x2 = torch.from_numpy(np.load(os.path.join(d, "x2.npy")))[None]
    blocks = {"batched": None, "blocked": 16}
    serve(d, lambda kind: model.pair(x1, x2, blocks[kind]).numpy())

if __name__ == "__main__":
    main()
