#!/usr/bin/env python3
"""Fixtures for the tables model: the committed weights (models/tables/tables.safetensors) run by
the PyTorch module of scripts/train-tables.py on two small rendered pages that share a table.

Writes Tests/BiLRPTests/Fixtures/tables/: page_a.png, page_b.png (grey, 8 bit) and tables.safetensors
with, for each page, the digit maps H (10, h, w), phi (100), and the BiLRP factors with LRP-0
everywhere (and the bigram layer on its own: a window of the first page's H and its bigram maps), which on this piecewise-linear model (ReLU, max-pool, min and max
to the winner, the last layer's bias absorbing its share) is gradient x input: A[p, m] = the sum over
patch p (8 x 8 pixels) of x * d phi_m / d x, one backward per bigram m (R = A_a A_b^T).

Needs the fixtures venv (make fixtures) and the fonts (make setup).
"""
import importlib.util
import os
import random

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def load(name, file):
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, file))
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


mt = load("make_tables", "make-tables.py")
tt = load("train_tables", "train-tables.py")
PATCH = 8


def page(rng, table, face, size):
    a, _, _, _ = mt.render_page(table, face, size, rng, layout={"blocks": 1})
    v = np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)
    return v


def factors(model, ink):
    x = torch.as_tensor(ink)[None, None].requires_grad_(True)
    phi = model(x)[0]
    h, w = ink.shape
    rows, cols = h // PATCH, w // PATCH
    A = torch.zeros(rows * cols, 100, dtype=torch.float64)
    for m in range(100):
        (g,) = torch.autograd.grad(phi[m], x, retain_graph=True)
        r = (x * g)[0, 0].detach().double()
        A[:, m] = r[:rows * PATCH, :cols * PATCH].reshape(rows, PATCH, cols, PATCH).sum(dim=(1, 3)).reshape(-1)
    return phi.detach(), A


def main():
    mt.check_faces()
    torch.set_num_threads(2)
    out = os.path.join(ROOT, "Tests", "BiLRPTests", "Fixtures", "tables")
    os.makedirs(out, exist_ok=True)
    det = tt.Detector()
    state = load_file(os.path.join(ROOT, "models", "tables", "tables.safetensors"))
    det.load_state_dict({k[len("detector."):]: v for k, v in state.items()})
    model = tt.TablesModel(det).eval()
    rng = random.Random(7)
    table = mt.random_table(rng)
    table["columns"] = [c[:5] for c in table["columns"][:3]]
    table["headers"] = table["headers"][:3]
    tensors = {}
    for name, face, size in [("a", "ebgaramond", 15), ("b", "cardo", 17)]:
        v = page(rng, table, face, size)
        Image.fromarray(v).save(os.path.join(out, f"page_{name}.png"))
        ink = (1 - v.astype(np.float32) / 255).astype(np.float32)
        with torch.no_grad():
            x = torch.as_tensor(ink)[None, None]
            H = det(x)[0]
            B = model.bigram_maps(H[None])[0]
        phi, A = factors(model, ink)
        tensors[f"{name}.H"] = H.contiguous()
        if name == "a":
            # The bigram layer on its own, on the 24 rows of H with the most detections (the file stays small).
            rows = H.sum(dim=(0, 2))
            r0 = int(torch.argmax(torch.stack([rows[i:i + 24].sum() for i in range(max(1, H.shape[1] - 23))])))
            window = H[:, r0:r0 + 24].contiguous()
            with torch.no_grad():
                tensors["a.H_window"] = window
                tensors["a.bigrams_window"] = model.bigram_maps(window[None])[0].contiguous()
        tensors[f"{name}.phi"] = phi.contiguous()
        tensors[f"{name}.A"] = A.float().contiguous()
        print(f"make-tables-fixtures: page {name} {v.shape}, phi sum {float(phi.sum()):.3f}, "
              f"{int((H > 0).sum())} positive detector cells")
    save_file(tensors, os.path.join(out, "tables.safetensors"), metadata={"patch": str(PATCH)})
    print(f"make-tables-fixtures: wrote {out}")


if __name__ == "__main__":
    main()
