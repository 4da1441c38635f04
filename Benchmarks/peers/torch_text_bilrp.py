#!/usr/bin/env python3
"""PyTorch peer for the text row of the BiLRP benchmark, and the independent implementation the
text fixtures use (scripts/make-text-fixtures.py imports TorchBert).

A BERT encoder written from a Hugging Face state dict (model.safetensors), mean pooling, and the
conservative propagation of Ali et al. (ICML 2022) as gradient x input with the LayerNorm standard
deviations, the attention weights and the ratio gelu(z) / z detached. BiLRP of a text pair with
the cosine: A[t, m] = sum_d x[t, d] d phi_m / d x[t, d] for each text, R = A1 A2^T / (|phi1| |phi2|).

batched  all h = 384 output dimensions in one backward (torch.autograd.grad with is_grads_batched)
authors  one backward per output dimension, as the authors' notebooks do (Vasileiou and Eberle 2024)

Driven by bilrp-bench over stdin (protocol of torch_bilrp.py): check KIND / time KIND / rss / quit.
The directory holds model.safetensors, config.json and texts.json ({"ids": [[...], [...]]}).
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file


class TorchBert:
    def __init__(self, model_dir):
        self.sd = {k: v.float() for k, v in load_file(os.path.join(model_dir, "model.safetensors")).items()}
        if "bert.embeddings.word_embeddings.weight" in self.sd:
            self.sd = {k[len("bert."):]: v for k, v in self.sd.items() if k.startswith("bert.")}
        with open(os.path.join(model_dir, "config.json")) as f:
            cfg = json.load(f)
        self.d, self.heads = cfg["hidden_size"], cfg["num_attention_heads"]
        self.layers, self.eps = cfg["num_hidden_layers"], cfg.get("layer_norm_eps", 1e-12)

    def embeddings(self, ids):
        sd = self.sd
        return (sd["embeddings.word_embeddings.weight"][ids] + sd["embeddings.position_embeddings.weight"][:len(ids)]
                + sd["embeddings.token_type_embeddings.weight"][0]).clone()

    def ln(self, x, name, detach):
        mu = x.mean(-1, keepdim=True)
        sigma = ((x - mu) ** 2).mean(-1, keepdim=True).add(self.eps).sqrt()
        if detach:
            sigma = sigma.detach()
        return (x - mu) / sigma * self.sd[name + ".weight"] + self.sd[name + ".bias"]

    def lin(self, x, name):
        return x @ self.sd[name + ".weight"].T + self.sd[name + ".bias"]

    def forward(self, x, detach=True):
        """Mean-pooled embedding of one sequence x (T, D); detach: the cp-lrp factors held constant."""
        d, heads = self.d, self.heads
        dh = d // heads
        x = self.ln(x, "embeddings.LayerNorm", detach)
        t = x.shape[0]
        for i in range(self.layers):
            p = f"encoder.layer.{i}"
            q = self.lin(x, p + ".attention.self.query").view(t, heads, dh).transpose(0, 1)
            k = self.lin(x, p + ".attention.self.key").view(t, heads, dh).transpose(0, 1)
            v = self.lin(x, p + ".attention.self.value").view(t, heads, dh).transpose(0, 1)
            a = torch.softmax(q @ k.transpose(1, 2) / dh ** 0.5, dim=-1)
            if detach:
                a = a.detach()
            o = (a @ v).transpose(0, 1).reshape(t, d)
            x = self.ln(self.lin(o, p + ".attention.output.dense") + x, p + ".attention.output.LayerNorm", detach)
            z = self.lin(x, p + ".intermediate.dense")
            g = torch.nn.functional.gelu(z)
            if detach:
                g = z * torch.where(z == 0, torch.full_like(z, 0.5), g / z).detach()
            x = self.ln(self.lin(g, p + ".output.dense") + x, p + ".output.LayerNorm", detach)
        return x.mean(0)

    def factors(self, ids, kind="batched", detach=True):
        """A (T, h) and phi of one text (detach=False: the true gradients, the Hessian x Product's factors)."""
        x = self.embeddings(ids).requires_grad_(True)
        phi = self.forward(x, detach)
        h = phi.shape[0]
        if kind == "batched":
            (g,) = torch.autograd.grad(phi, x, grad_outputs=torch.eye(h), is_grads_batched=True)
            A = (x.detach() * g).sum(-1).T
        else:
            cols = []
            for m in range(h):
                (g,) = torch.autograd.grad(phi[m], x, retain_graph=m < h - 1)
                cols.append((x.detach() * g).sum(-1))
            A = torch.stack(cols, 1)
        return A.detach(), phi.detach()

    def hessian_product(self, ids1, ids2):
        """HP[t, t'] = sum_{d, d'} x[t, d] x'[t', d'] d^2 <phi(x), phi(x')> / dx[t, d] dx'[t', d'], by double
        backward through the true (undetached) network: one second backward per token of the first text."""
        x1 = self.embeddings(ids1).requires_grad_(True)
        x2 = self.embeddings(ids2).requires_grad_(True)
        y = self.forward(x1, False) @ self.forward(x2, False)
        (g,) = torch.autograd.grad(y, x1, create_graph=True)
        rows = []
        for t in range(len(ids1)):
            (h,) = torch.autograd.grad((x1[t] * g[t]).sum(), x2, retain_graph=True)
            rows.append((x2 * h).sum(-1).detach())
        return torch.stack(rows, 0)

    def pair(self, ids1, ids2, kind="batched"):
        (A1, p1), (A2, p2) = self.factors(ids1, kind), self.factors(ids2, kind)
        return A1 @ A2.T / (p1.norm() * p2.norm())


def main():
    from torch_bilrp import serve

    d, threads = sys.argv[1], int(sys.argv[3])
    torch.set_num_threads(threads)
    model = TorchBert(d)
    with open(os.path.join(d, "texts.json")) as f:
        ids1, ids2 = json.load(f)["ids"]
    serve(d, lambda kind: model.pair(ids1, ids2, kind).numpy())

if __name__ == "__main__":
    main()
