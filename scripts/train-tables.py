#!/usr/bin/env python3
"""Trains the tables model's digit detector on rendered pages (scripts/make-tables.py) and writes
the whole similarity model: assets/tables/tables.safetensors and assets/tables/tables.onnx.

The model (the paper's design, BILRP section on the tables model):

- digit detector on the ink of a grey page (ink = 1 - grey, so blank paper is 0): convolutions
  without biases and ReLUs, one 2 x 2 max-pool (stride 2), a last 1 x 1 convolution giving 10 maps,
  one per digit, minus a learned threshold per digit (the last layer's bias, the only one), clipped
  at zero: H_0 .. H_9 fire at the centre of each printed digit.
- bigram layer: for each ordered digit pair (d1, d2) and horizontal shift s in SHIFTS (the spacing
  of adjacent digits at the detector's scale, 2 px per cell), min(H_d1(p), H_d2(p + (s, 0))), then
  the maximum over the shifts: 100 maps. The pairs are gathered by two fixed 1 x 1 convolutions
  (channel d1 * 10 + d2 reads H_d1, and H_d2), the shift is a slice and a zero pad.
- sum pooling over the page: phi(x), the 100-bin bigram histogram; y = <phi(x), phi(x')>.

Training: pages rendered on the fly from a fixed seed, random crops, binary cross-entropy against
Gaussian peaks at every digit's centre (per digit map, at stride 2), Adam. Seeded, CPU, 2 threads;
about 12 minutes here. Prints the detector's digit precision and recall on 100 held-out pages (a
detection is a local maximum of H_d above 0, per map or with one digit per place; it is right when a
digit d's centre is within 0.3 of the font size), and writes them into the safetensors metadata.

    train-tables.py [--steps N] [--pages N] [--out DIR] [--seed S]
    train-tables.py --evaluate models/tables/tables.safetensors
"""
import argparse
import importlib.util
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("make_tables", os.path.join(HERE, "make-tables.py"))
mt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mt)

SHIFTS = [3, 4, 5, 6]  # cells of 2 px: adjacent digits' centres are 7-12 px apart at 14-24 px type
STRIDE = 2
CROP = 128


class Detector(nn.Module):
    """Bias-free convolutions and ReLUs; the last layer's bias is minus the per-digit threshold."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 5, padding=2, bias=False), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.ReLU(),
            nn.Conv2d(32, 48, 3, padding=2, dilation=2, bias=False), nn.ReLU(),
            nn.Conv2d(48, 48, 3, padding=2, dilation=2, bias=False), nn.ReLU(),
        )
        self.head = nn.Conv2d(48, 10, 1, bias=True)

    def logits(self, ink):
        return self.head(self.features(ink))

    def forward(self, ink):
        return F.relu(self.logits(ink))


def selection(first):
    """The 1 x 1 convolution weight (100, 10, 1, 1) gathering H_d1 (first) or H_d2 for channel d1 * 10 + d2."""
    w = torch.zeros(100, 10, 1, 1)
    for c in range(100):
        w[c, c // 10 if first else c % 10] = 1
    return w


class TablesModel(nn.Module):
    """The whole similarity model's embedding: page ink (N, 1, H, W) -> phi (N, 100)."""

    def __init__(self, detector):
        super().__init__()
        self.detector = detector
        self.register_buffer("first", selection(True))
        self.register_buffer("second", selection(False))

    def bigram_maps(self, H):
        A = F.conv2d(H, self.first)
        B = F.conv2d(H, self.second)
        m = None
        for s in SHIFTS:
            Bs = F.pad(B[..., s:], (0, s))  # Bs(p) = B(p + (s, 0))
            v = torch.minimum(A, Bs)
            m = v if m is None else torch.maximum(m, v)
        return m

    def forward(self, ink):
        return self.bigram_maps(self.detector(ink)).sum(dim=(2, 3))


# MARK: - Data

def sample(rng, degrade=True):
    table = mt.random_table(rng)
    face = rng.choice(sorted(mt.FACES))
    size = rng.randint(14, 24)
    page, digits, _, _ = mt.render_page(table, face, size, rng, degrade=degrade)
    return 1 - page, digits, size


def targets(digits, shape, size):
    """Gaussian peaks (sigma 1 cell) at every digit's centre on its digit's map, at stride 2."""
    h, w = shape[0] // STRIDE, shape[1] // STRIDE
    t = np.zeros((10, h, w), np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    for d, cx, cy, *_ in digits:
        x, y = cx / STRIDE - 0.5, cy / STRIDE - 0.5
        r = 3
        x0, x1, y0, y1 = max(0, int(x) - r), min(w, int(x) + r + 2), max(0, int(y) - r), min(h, int(y) + r + 2)
        if x0 >= x1 or y0 >= y1:
            continue
        g = np.exp(-((xx[y0:y1, x0:x1] - x) ** 2 + (yy[y0:y1, x0:x1] - y) ** 2) / 2)
        t[d, y0:y1, x0:x1] = np.maximum(t[d, y0:y1, x0:x1], g)
    return t


def crop(ink, t, rng):
    H, W = ink.shape
    ch, cw = min(CROP, H), min(CROP, W)
    y = rng.randrange(0, (H - ch) // STRIDE + 1) * STRIDE
    x = rng.randrange(0, (W - cw) // STRIDE + 1) * STRIDE
    a = np.zeros((CROP, CROP), np.float32)
    b = np.zeros((10, CROP // STRIDE, CROP // STRIDE), np.float32)
    a[:ch, :cw] = ink[y:y + ch, x:x + cw]
    b[:, :ch // STRIDE, :cw // STRIDE] = t[:, y // STRIDE:(y + ch) // STRIDE, x // STRIDE:(x + cw) // STRIDE]
    return a, b


# MARK: - Evaluation

def detections(Hmap, compete):
    """Local maxima (3 x 3) above 0 of each digit map: (score, digit, x, y) in page pixels. With
    `compete`, one digit per place: a peak counts only where its map is the strongest of the ten and
    the strongest within 5 x 5 cells (a detector that fires for 3 and 5 on one 3 gives one answer)."""
    H = torch.as_tensor(Hmap)
    peak = (H == F.max_pool2d(H[None], 3, stride=1, padding=1)[0]) & (H > 0)
    if compete:
        top = H.max(dim=0).values
        peak = peak & (H == top[None]) & (top == F.max_pool2d(top[None, None], 5, stride=1, padding=2)[0, 0])[None]
    d, y, x = torch.nonzero(peak, as_tuple=True)
    found = [(float(H[a, b, c]), int(a), (int(c) + 0.5) * STRIDE, (int(b) + 0.5) * STRIDE) for a, b, c in zip(d, y, x)]
    return sorted(found, reverse=True)


def precision_recall(model, pages, compete):
    """A detection is right when an unmatched digit of its class has its centre within 0.3 of the
    font size (strongest detections matched first)."""
    tp = fp = fn = 0
    with torch.no_grad():
        for ink, digits, size in pages:
            Hm = model.detector(torch.as_tensor(ink)[None, None])[0]
            used = [False] * len(digits)
            for _, d, x, y in detections(Hm, compete):
                best, bi = 0.3 * size, -1
                for i, (gd, cx, cy, *_) in enumerate(digits):
                    dist = math.hypot(cx - x, cy - y)
                    if not used[i] and gd == d and dist <= best:
                        best, bi = dist, i
                if bi >= 0:
                    used[bi] = True
                    tp += 1
                else:
                    fp += 1
            fn += used.count(False)
    return tp / max(1, tp + fp), tp / max(1, tp + fn)


def held_out():
    return [sample(random.Random(10_000 + i)) for i in range(100)]


def evaluate(model):
    """Digit precision and recall on 100 held-out pages, per map and one digit per place."""
    pages = held_out()
    out = {}
    for compete, name in [(False, "per_map"), (True, "one_per_place")]:
        p, r = precision_recall(model, pages, compete)
        out[name] = (p, r)
        print(f"train-tables: held-out digits (100 pages), {name.replace('_', ' ')}: precision {p:.3f}, recall {r:.3f}",
              flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--pages", type=int, default=800, help="rendered training pages (crops drawn from them)")
    ap.add_argument("--out", default=os.path.join(HERE, "..", "assets", "tables"))
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--evaluate", metavar="SAFETENSORS", help="only evaluate these weights on the held-out pages")
    args = ap.parse_args()
    mt.check_faces()
    if args.evaluate:
        from safetensors.torch import load_file
        det = Detector()
        det.load_state_dict({k[len("detector."):]: v for k, v in load_file(args.evaluate).items()})
        evaluate(TablesModel(det.eval()).eval())
        return
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    rng = random.Random(args.seed)
    start = time.time()
    train = []
    for _ in range(args.pages):
        ink, digits, size = sample(rng)
        train.append((ink, targets(digits, ink.shape, size)))
    print(f"train-tables: rendered {len(train)} pages in {time.time() - start:.0f} s", flush=True)
    det = Detector()
    with torch.no_grad():
        det.head.bias.fill_(-2.0)
    opt = torch.optim.Adam(det.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=args.steps, pct_start=0.1)
    batch = 12
    for step in range(args.steps):
        xs, ts = zip(*(crop(*train[rng.randrange(len(train))], rng) for _ in range(batch)))
        x = torch.as_tensor(np.stack(xs))[:, None]
        t = torch.as_tensor(np.stack(ts))
        logits = det.logits(x)
        weight = 1 + 20 * t  # digits are a small part of a page
        loss = F.binary_cross_entropy_with_logits(logits, t, weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == args.steps - 1:
            print(f"train-tables: step {step} loss {loss.item():.4f} ({time.time() - start:.0f} s)", flush=True)
    det.eval()
    model = TablesModel(det).eval()
    scores = evaluate(model)
    os.makedirs(args.out, exist_ok=True)
    from safetensors.torch import save_file
    tensors = {f"detector.{k}": v.contiguous() for k, v in det.state_dict().items()}
    meta = {"shifts": json.dumps(SHIFTS), "stride": str(STRIDE), "seed": str(args.seed), "steps": str(args.steps),
            "input": "ink = 1 - grey in [0, 1], one channel"}
    for name, (p, r) in scores.items():
        meta[f"precision_{name}"], meta[f"recall_{name}"] = f"{p:.4f}", f"{r:.4f}"
    path = os.path.join(args.out, "tables.safetensors")
    save_file(tensors, path + ".tmp", metadata=meta)
    os.replace(path + ".tmp", path)
    onnx_path = os.path.join(args.out, "tables.onnx")
    torch.onnx.export(model, torch.zeros(1, 1, 96, 128), onnx_path + ".raw", input_names=["ink"], output_names=["phi"],
                      dynamic_axes={"ink": {2: "height", 3: "width"}}, opset_version=17, dynamo=False)
    # The exporter computes each zero pad's amounts with a dozen shape ops; onnxruntime's basic
    # optimizations fold them into constants (standard ops only: Conv, Relu, MaxPool, Slice, Pad, Min,
    # Max, ReduceSum).
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = onnx_path + ".tmp"
    ort.InferenceSession(onnx_path + ".raw", so, providers=["CPUExecutionProvider"])
    os.remove(onnx_path + ".raw")
    os.replace(onnx_path + ".tmp", onnx_path)
    print(f"train-tables: wrote {path} and {onnx_path} ({time.time() - start:.0f} s in all)")


if __name__ == "__main__":
    main()
