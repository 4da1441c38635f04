#!/usr/bin/env python3
"""Fixtures for the text side (sentence-embedding models), from Hugging Face's own libraries.

Writes Tests/BiLRPTests/Fixtures/text/tokenizer_cases.json: for every sentence of a fixed, seeded set
(at least 200: accents, punctuation, numbers, emoji, CJK, very long words, control and format
characters, special-token strings), the ids and the character offsets that Hugging Face `tokenizers`
gives with the fetched all-MiniLM-L6-v2 tokenizer.json (no truncation), and a few cases truncated at a
small maximum length. Offsets are code-point indices into the original string (Python's str indices).

Writes Tests/BiLRPTests/Fixtures/text/minilm.json and minilm.safetensors: the sentence embeddings of
Hugging Face `transformers` (BertModel, a padded batch with its attention mask, mean pooling over the
mask as 1_Pooling/config.json says, before the Normalize module) for a few sentences, one of them
truncated at the model's 256 tokens; and, for two sentences, the conservative-propagation relevance
(Ali et al. 2022) computed independently: gradient x input at the input embeddings of c . phi(x) in a
PyTorch BERT written from the state dict (Benchmarks/peers/torch_text_bilrp.py), with the LayerNorm standard deviations, the attention
weights and the ratio gelu(z) / z detached. That implementation's forward is first checked against
transformers' own.

Needs the fetched assets (scripts/fetch-assets.sh) and the fixtures venv (make fixtures).
"""
import json
import os
import random
import sys

from tokenizers import Tokenizer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Benchmarks", "peers"))
from torch_text_bilrp import TorchBert  # noqa: E402  the independent BERT (also the benchmark's peer)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = os.environ.get("BILRP_ASSETS", os.path.join(ROOT, "assets"))
MODEL = os.path.join(ASSETS, "models", "all-MiniLM-L6-v2")
OUT = os.path.join(ROOT, "Tests", "BiLRPTests", "Fixtures", "text")

HAND_WRITTEN = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "How do I reset my password?",
    "Forgot your password? Click 'reset' and follow the e-mail's instructions!",
    "Semantic search ranks documents by the cosine of their embeddings.",
    "Which words of the query matched which words of the document?",
    "Retrieval-augmented generation (RAG) needs good retrievers...",
    "It's 3:45 p.m. on 2024-05-17; the temperature is -3.5°C (26.6°F).",
    "Prices: $19.99, €5,00, £3, ¥1000, ₹250 and 12% off!!!",
    "Call +1 (555) 010-9999 or write to jane.doe@example.com.",
    "See https://example.org/path?q=bilrp&lang=en#section-2 for details.",
    "x = (a + b) * c / d - e ^ f; y <= 10 && z >= 2 || w != 3",
    "C++, C#, F#, Objective-C and .NET are languages/platforms.",
    "He said: «Bonjour!» — and she replied „Guten Tag“.",
    "“Smart quotes”, ‘single ones’, and `backticks` are punctuation.",
    "Ellipsis… en–dash, em—dash, bullet • and interpunct ·",
    "Café, naïve, résumé, coöperate, jalapeño, façade, Ångström.",
    "Über die Brücke gehen Mädchen und Jungen; Straße, Fuß, ẞ.",
    "¿Dónde está la biblioteca? ¡Aquí!",
    "Tiếng Việt có nhiều dấu: ắ, ằ, ẳ, ẵ, ặ, ố, ồ, ổ, ỗ, ộ.",
    "Ελληνικά: ΣΟΦΊΑ, σοφία, Ἀθῆναι.",
    "Русский текст: Ёлка и ЙОГУРТ, съешь же ещё этих мягких булок.",
    "العربية: مرحبا بالعالم! ١٢٣",
    "हिन्दी में एक वाक्य है।",
    "İstanbul, Iğdır, ışık, DİYARBAKIR.",
    "Dutch ĳ and ligatures: ﬁne ﬂow ﬀ Æsop Œuvre.",
    "中文句子：我们在北京学习自然语言处理。",
    "日本語の文章です。カタカナとひらがなと漢字。",
    "한국어 문장입니다. 안녕하세요!",
    "Mixed 中文 and English words 混合 text.",
    "Rare CJK: 𠀀𠀁 𪜀 and compatibility 豈 更.",
    "Emoji: 😀 😃 😄 👍🏽 👨‍👩‍👧‍👦 🇩🇪 ❤️ 🫠 🥰",
    "I love it 🥰 so much!!! 🎉🎉🎉",
    "Numbers 0 1 12 123 1234 12345 123456789 3.14159 1e-10 1,000,000",
    "Roman numerals Ⅻ and superscripts x² y³ and fractions ½ ¾.",
    "Full-width ＡＢＣ １２３ ！？",
    "Supercalifragilisticexpialidocious is a very long word.",
    "Pneumonoultramicroscopicsilicovolcanoconiosis, floccinaucinihilipilification.",
    "a" * 99 + " boundary",
    "b" * 100 + " boundary",
    "c" * 101 + " boundary",
    "x" * 250,
    "Tabs\tand\nnewlines\r\nand   many    spaces.",
    "Zero\u200bwidth\u200cjoiner\u200dand\ufeffBOM and soft\u00adhyphen.",
    "Control \u0007 bell \u0000 null \u001b escape \u007f delete \u0085 next-line.",
    "Non-breaking\u00a0space, thin\u2009space, ideographic\u3000space, line\u2028separator.",
    "Replacement \ufffd character and private use \ue000 char.",
    "Combining: e\u0301 a\u0300 o\u0308 n\u0303 c\u0327 (decomposed accents).",
    "Unassigned \u0378 code point.",
    "Special tokens in text: [CLS] hello [SEP] world [MASK] and [PAD] [UNK].",
    "[cls] lower-case special strings are not special.",
    "don't won't can't I'm you're it's we'll they'd",
    "#hashtag @mention ~tilde |pipe \\backslash _underscore_",
    "...!!!???,,,;;;:::---___",
    "(((nested [brackets {and} braces])))",
    "UPPER CASE SENTENCE WITH MANY WORDS.",
    "MiXeD CaSe WoRdS LiKe iPhone, eBay, McDonald's.",
    "   leading and trailing spaces   ",
    "a",
    "?",
    "1",
    "😀",
    "中",
    "The quick brown fox jumps over the lazy dog.",
    "Pack my box with five dozen liquor jugs.",
    "BiLRP explains similarity models in terms of pairs of input features.",
    "Layer-wise relevance propagation redistributes the prediction onto the input.",
    "Astronomical tables from 1472-1650 were printed in many editions.",
]

WORDS = (
    "the of and to in is was for on that with as by at from his her an be this which or are had "
    "not but were they all one can their has been would more will there when who its also after "
    "into other only new two some could these may than first time people any most such well "
    "retrieval embedding similarity query document relevance explanation transformer attention "
    "layer token sentence model search engine ranking neural network propagation conservation "
    "café naïve Zürich São Paulo Kraków Reykjavík Malmö Ærøskøbing Dvořák Łódź "
    "COVID-19 GPT-4 ResNet-50 VGG-16 e-mail co-operate state-of-the-art well-known "
    "3.5 42 1999 2024 100% 7x 0.001 -17 +3 1/2 "
    "北京 東京 서울 学习 漢字 ひらがな "
    "😀 👍 🚀 ✨ 🤖 "
    "antidisestablishmentarianism hippopotomonstrosesquippedaliophobia Rindfleischetikettierungsüberwachungsaufgabenübertragungsgesetz"
).split()
PUNCT = [".", ",", "!", "?", ";", ":", "...", " -", " (", ")", "\"", "'", " —", "…"]


def generated(rng, count):
    out = []
    for _ in range(count):
        n = rng.randint(1, 40)
        parts = []
        for _ in range(n):
            w = rng.choice(WORDS)
            r = rng.random()
            if r < 0.15:
                w = w.upper()
            elif r < 0.3:
                w = w.capitalize()
            if rng.random() < 0.2:
                w += rng.choice(PUNCT)
            parts.append(w)
        sep = rng.choice([" ", " ", " ", "  ", "\t"])
        out.append(sep.join(parts))
    return out


EMBED_SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "How do I reset my password?",
    "Forgot your password? Click 'reset' and follow the e-mail's instructions!",
    "Café, naïve, résumé: 中文 and emoji 😀 in one sentence.",
    "a",
    " ".join(["Semantic search ranks documents by the cosine of their embeddings."] * 30),
]
# Token-pair BiLRP (cosine): (first, second, max_length); the last pair truncated.
PAIRS = [
    ("A man is eating food.", "A man is eating a piece of bread.", 256),
    ("How do I reset my password?", "Forgot your password? Click 'reset' and follow the e-mail's instructions!", 256),
    (" ".join(["Semantic search ranks documents by the cosine of their embeddings."] * 3), "Which words matched?", 16),
]
RELEVANCE_SENTENCES = [
    "A man is riding a white horse on an enclosed ground.",
    "Which words of the query matched which words of the document?",
]


def text_fixtures():
    import numpy as np
    import torch
    from safetensors.torch import save_file
    from transformers import BertModel

    torch.manual_seed(0)
    tok = Tokenizer.from_file(os.path.join(MODEL, "tokenizer.json"))
    with open(os.path.join(MODEL, "sentence_bert_config.json")) as f:
        max_len = json.load(f)["max_seq_length"]
    tok.enable_truncation(max_length=max_len)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    model = BertModel.from_pretrained(MODEL, attn_implementation="eager").eval()
    enc = tok.encode_batch(EMBED_SENTENCES)
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
        m = mask.unsqueeze(-1).float()
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    tensors = {}
    meta = {"transformers_version": __import__("transformers").__version__, "max_length": max_len,
            "embeddings": [], "relevance": []}
    for i, (s, e) in enumerate(zip(EMBED_SENTENCES, enc)):
        n = int(sum(e.attention_mask))
        meta["embeddings"].append({"text": s, "ids": e.ids[:n]})
        tensors[f"embedding.{i}"] = pooled[i].contiguous()

    bert = TorchBert(MODEL)
    d = bert.d
    forward, embeddings_of = bert.forward, bert.embeddings

    for i in range(len(EMBED_SENTENCES)):
        ids_i = meta["embeddings"][i]["ids"]
        with torch.no_grad():
            ours = forward(embeddings_of(ids_i), False)
        err = (ours - pooled[i]).abs().max().item() / pooled[i].abs().max().item()
        assert err < 1e-5, f"the fixture's BERT differs from transformers on sentence {i}: {err}"

    gen = torch.Generator().manual_seed(7)
    for j, s in enumerate(RELEVANCE_SENTENCES):
        ids_j = tok.encode(s).ids
        ids_j = [t for t in ids_j if t != 0]
        x = embeddings_of(ids_j).requires_grad_(True)
        phi = forward(x, True)
        c = torch.randn(d, generator=gen)
        (c * phi).sum().backward()
        R = (x * x.grad).detach()
        meta["relevance"].append({"text": s, "ids": ids_j})
        tensors[f"relevance.{j}.input"] = x.detach().contiguous()
        tensors[f"relevance.{j}.c"] = c
        tensors[f"relevance.{j}.phi"] = phi.detach()
        tensors[f"relevance.{j}.R"] = R.contiguous()
    meta["pairs"] = []
    for j, (s1, s2, n) in enumerate(PAIRS):
        tok.no_padding()
        tok.enable_truncation(max_length=n)
        factors, phis, ids_pair = [], [], []
        for s in (s1, s2):
            ids_s = tok.encode(s).ids
            A, phi = bert.factors(ids_s, "authors")  # one backward per output dimension
            factors.append(A)  # (T, h): A[t, m], relevance of token t for phi_m
            phis.append(phi)
            ids_pair.append(ids_s)
        scale = 1 / (phis[0].norm() * phis[1].norm())
        R = factors[0] @ factors[1].T * scale
        meta["pairs"].append({"first": s1, "second": s2, "max_length": n, "ids": ids_pair})
        tensors[f"pair.{j}.A1"] = factors[0].contiguous()
        tensors[f"pair.{j}.A2"] = factors[1].contiguous()
        tensors[f"pair.{j}.R"] = R.contiguous()
        tensors[f"pair.{j}.cosine"] = (phis[0] @ phis[1] * scale).reshape(1)
    # hp: the same maps with the true gradients (nothing detached). Summed over a token's features
    # they vanish (the embedding LayerNorm is scale invariant per token: Euler), so the check is
    # per feature; the token-pair Hessian x Product is checked to vanish too, by double backward.
    for j in range(len(RELEVANCE_SENTENCES)):
        x = tensors[f"relevance.{j}.input"].clone().requires_grad_(True)
        phi = forward(x, False)
        (tensors[f"relevance.{j}.c"] * phi).sum().backward()
        tensors[f"hp.relevance.{j}.R"] = (x * x.grad).detach().contiguous()
    ids1, ids2 = tok.encode(PAIRS[0][0]).ids, tok.encode(PAIRS[0][1]).ids
    tensors["hp.pair.R"] = bert.hessian_product(ids1, ids2).contiguous()
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    save_file(tensors, os.path.join(OUT, "minilm.safetensors"))
    with open(os.path.join(OUT, "minilm.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, ensure_ascii=True, indent=1)
    print(f"{OUT}/minilm.*: {len(EMBED_SENTENCES)} embeddings, {len(RELEVANCE_SENTENCES)} relevance maps")


def main():
    text_fixtures()
    tok = Tokenizer.from_file(os.path.join(MODEL, "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    rng = random.Random(20241205)
    sentences = HAND_WRITTEN + generated(rng, 160)
    cases = []
    for s in sentences:
        e = tok.encode(s)
        cases.append({"text": s, "ids": e.ids, "tokens": e.tokens, "offsets": [list(o) for o in e.offsets]})
    truncated = []
    for s, n in [(HAND_WRITTEN[7], 6), (HAND_WRITTEN[23], 5), (HAND_WRITTEN[38], 8), (HAND_WRITTEN[49], 3)]:
        tok.enable_truncation(max_length=n)
        e = tok.encode(s)
        truncated.append({"text": s, "max_length": n, "ids": e.ids, "offsets": [list(o) for o in e.offsets]})
    tok.no_truncation()
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "tokenizer_cases.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"tokenizers_version": __import__("tokenizers").__version__, "cases": cases,
                   "truncated": truncated}, f, ensure_ascii=True, indent=0)
    print(f"{path}: {len(cases)} sentences, {sum(len(c['ids']) for c in cases)} tokens, {len(truncated)} truncated cases")


if __name__ == "__main__":
    sys.exit(main())
