#!/usr/bin/env python3
"""Synthetic pages of early-modern numeric tables, rendered from real typefaces, with ground truth.

The paper's tables corpus (Sphaera, 1472-1650) is not reachable from here, so the project renders
its own: pages of tables as those books printed them (a title, column headers, columns of 1- to
3-digit numbers: degrees and minutes, latitudes, hour angles; ruled lines), in four faces close to
the period's (Debian packages: EB Garamond, Junicode, Linux Libertine, Cardo; all SIL OFL 1.1 or
GPL + font exception), with print and scan degradation: ink spread, broken strokes, blur, noise,
uneven paper tone, small rotations, varied scale. Every digit's box and centre is recorded.

Pairs: `same` pairs print one table (the same numbers) twice, in different faces, sizes and
layouts (the rows reset into another number of blocks, other spacing and rules); `different`
pairs print two unrelated tables.

As a module, `render_page` and `random_table` serve scripts/train-tables.py. As a script it writes
a set of pairs for the tests and the demo:

    make-tables.py OUT_DIR [--pairs N] [--seed S]

OUT_DIR/pair_XXX_{a,b}.png (grey 8-bit) and OUT_DIR/pairs.json: for each pair whether it shares a
table, and each page's digits (digit, centre, box) and numbers (their digits in reading order).
OUT_DIR/pairs.csv is the pair list of `bilrp eval --pairs` (related: shares a table), with the
digit-pair boxes of the shared pairs' pages (pair_XXX_{a,b}.bigrams.json) as their labels.
"""
import argparse
import json
import math
import os
import random

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

# The faces (Debian packages fonts-ebgaramond, fonts-junicode, fonts-linuxlibertine, fonts-cardo).
FACES = {
    "ebgaramond": "/usr/share/fonts/opentype/ebgaramond/EBGaramond12-Regular.otf",
    "junicode": "/usr/share/fonts/opentype/junicode/JunicodeTwoBeta-Regular.otf",
    "libertine": "/usr/share/fonts/opentype/linux-libertine/LinLibertine_R.otf",
    "cardo": "/usr/share/fonts/truetype/cardo/Cardo104s.ttf",
}

HEADERS = ["Gradus", "Minuta", "Signa", "Latitudo", "Horae", "Dies", "Anni", "Altitudo", "Arcus", "Umbra",
           "Declinatio", "Ascensio", "Climata", "Longitudo", "Medius", "Verus", "Motus", "Aequatio"]
TITLES = ["Tabula declinationis solis", "Tabula ascensionum", "Tabula climatum", "Tabula umbrarum",
          "Tabula motus lunae", "Tabula aequationis", "Tabula latitudinum", "Canon horarum"]


def check_faces():
    missing = [p for p in FACES.values() if not os.path.exists(p)]
    if missing:
        raise SystemExit("make-tables: missing fonts " + ", ".join(missing)
                         + " (apt install fonts-ebgaramond fonts-junicode fonts-linuxlibertine fonts-cardo; make setup does)")


# MARK: - Tables

def random_column(rng, rows):
    """One column of a period table: degrees (0-359), minutes (0-59), latitudes (0-90), hours (1-24)
    or a running index; 1 to 3 digits, sometimes minutes with a leading zero."""
    kind = rng.choice(["degrees", "minutes", "latitude", "hours", "index"])
    if kind == "index":
        start = rng.randint(1, 300)
        return [str(start + i) for i in range(rows)]
    if kind == "minutes":
        pad = rng.random() < 0.4
        return [f"{rng.randint(0, 59):02d}" if pad else str(rng.randint(0, 59)) for _ in range(rows)]
    top = {"degrees": 359, "latitude": 90, "hours": 24}[kind]
    # Tables progress: a drifting walk, as a column of a real table does.
    v = rng.randint(0, top)
    out = []
    for _ in range(rows):
        v = (v + rng.randint(0, max(1, top // 12))) % (top + 1)
        out.append(str(v))
    return out


def random_table(rng, small=False):
    """Columns of numbers (strings), their headers and a title."""
    cols, rows = (3, 6) if small else (rng.randint(3, 6), rng.randint(6, 14))
    return {"title": rng.choice(TITLES), "headers": rng.sample(HEADERS, cols),
            "columns": [random_column(rng, rows) for _ in range(cols)]}


# MARK: - Rendering

def _font(face, size):
    return ImageFont.truetype(FACES[face], size)


def render_page(table, face, size, rng, layout=None, degrade=True):
    """A page (float32 array, 1 paper .. 0 ink) and its digits [(digit, cx, cy, x0, y0, x1, y1)] and
    numbers [[digit indices in reading order]]. layout: blocks (1-3: the rows split into blocks
    side by side), spacing of rows and columns, rules; random when None."""
    lay = dict(layout or {})
    lay.setdefault("blocks", rng.choice([1, 1, 2, 3]) if len(table["columns"][0]) >= 9 else rng.choice([1, 2]))
    lay.setdefault("row", rng.uniform(1.15, 1.6))
    lay.setdefault("gap", rng.uniform(1.2, 2.4))
    lay.setdefault("rules", rng.random() < 0.6)
    lay.setdefault("frame", rng.random() < 0.5)
    font = _font(face, size)
    head = _font(face, max(9, int(size * 0.75)))
    cols, rows = len(table["columns"]), len(table["columns"][0])
    per = math.ceil(rows / lay["blocks"])
    widths = [max(max(font.getlength(v) for v in c), head.getlength(h)) for c, h in zip(table["columns"], table["headers"])]
    gap, line = lay["gap"] * size, lay["row"] * size
    block_w = sum(widths) + gap * (cols - 1)
    margin = int(size * rng.uniform(1.0, 2.0))
    W = int(2 * margin + lay["blocks"] * block_w + (lay["blocks"] - 1) * gap * 1.5)
    H = int(2 * margin + size * 2.6 + (per + 0.5) * line)
    W, H = (W + 7) // 8 * 8, (H + 7) // 8 * 8
    ink = Image.new("L", (W, H), 0)
    draw = ImageDraw.Draw(ink)
    digits, numbers = [], []
    title_font = _font(face, int(size * 1.1))
    draw.text((margin, margin), table["title"], font=title_font, fill=255)
    top = margin + size * 1.6
    for b in range(lay["blocks"]):
        x0 = margin + b * (block_w + gap * 1.5)
        x = x0
        for c in range(cols):
            hw = head.getlength(table["headers"][c])
            draw.text((x + widths[c] - hw, top), table["headers"][c], font=head, fill=255)
            x += widths[c] + gap
        y_rule = top + size * 1.05
        if lay["rules"]:
            draw.line([(x0, y_rule), (x0 + block_w, y_rule)], fill=255, width=max(1, size // 14))
        for r in range(b * per, min(rows, (b + 1) * per)):
            y = y_rule + size * 0.25 + (r - b * per) * line
            x = x0
            for c in range(cols):
                text = table["columns"][c][r]
                cx = x + widths[c] - font.getlength(text)  # right-aligned, as the period set figures
                idx = []
                for ch in text:
                    l, t, rr, bb = font.getbbox(ch)
                    draw.text((cx, y), ch, font=font, fill=255)
                    box = (cx + l, y + t, cx + rr, y + bb)
                    idx.append(len(digits))
                    digits.append([int(ch), (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, *box])
                    cx += font.getlength(ch)
                numbers.append(idx)
                x += widths[c] + gap
        if lay["rules"] and rng.random() < 0.5:
            x = x0
            for c in range(cols - 1):
                x += widths[c] + gap
                xv = x - gap / 2
                draw.line([(xv, top), (xv, y_rule + per * line)], fill=255, width=1)
    if lay["frame"]:
        draw.rectangle([margin // 2, margin // 2, W - margin // 2, H - margin // 2], outline=255, width=max(1, size // 12))
    a = np.asarray(ink, dtype=np.float32) / 255
    if degrade:
        a, digits = _degrade(a, digits, rng)
    else:
        a = 1 - a
    return a.astype(np.float32), digits, numbers, lay


def _degrade(a, digits, rng):
    """Print and scan: ink spread or thinning, broken strokes, blur, a small rotation, uneven paper,
    ink tone, noise."""
    H, W = a.shape
    img = Image.fromarray((a * 255).astype(np.uint8))
    r = rng.random()
    if r < 0.3:
        img = img.filter(ImageFilter.MaxFilter(3))  # ink spread
    a = np.asarray(img, dtype=np.float32) / 255
    if 0.3 <= r < 0.4 and rng.random() < 0.3:
        # Thin, faded ink: a stroke loses its edges to half tone. (A plain 3 x 3 minimum erased the
        # 1-2 px strokes of Libertine and Cardo at 14-16 px, leaving nearly blank pages.)
        thin = np.asarray(img.filter(ImageFilter.MinFilter(3)), dtype=np.float32) / 255
        a = np.maximum(thin, 0.5 * a)
    nr = np.random.default_rng(rng.randint(0, 2**31))
    # Broken strokes: small blobs where the ink did not take.
    holes = nr.random((H // 3 + 1, W // 3 + 1)) < rng.uniform(0.0, 0.06)
    holes = np.kron(holes, np.ones((3, 3)))[:H, :W]
    a = a * (1 - holes * rng.uniform(0.5, 1.0))
    img = Image.fromarray((np.clip(a, 0, 1) * 255).astype(np.uint8))
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.9)))
    angle = rng.uniform(-1.5, 1.5)
    img = img.rotate(angle, resample=Image.BILINEAR, fillcolor=0)
    t = math.radians(-angle)  # PIL rotates counter-clockwise about the centre
    cx0, cy0 = W / 2, H / 2
    moved = []
    for d, x, y, x0, y0, x1, y1 in digits:
        dx, dy = x - cx0, y - cy0
        nx, ny = cx0 + dx * math.cos(t) - dy * math.sin(t), cy0 + dx * math.sin(t) + dy * math.cos(t)
        # The box moves with its centre (a 1.5 degree turn leaves its size as it was).
        moved.append([d, nx, ny, x0 + nx - x, y0 + ny - y, x1 + nx - x, y1 + ny - y])
    ink = np.asarray(img, dtype=np.float32) / 255
    # Paper: a tone with a slow gradient and blotches; ink darker than it.
    yy, xx = np.mgrid[0:H, 0:W] / max(H, W)
    tone = rng.uniform(0.78, 0.95) + rng.uniform(-0.06, 0.06) * (xx - 0.5) + rng.uniform(-0.06, 0.06) * (yy - 0.5)
    blotch = np.asarray(Image.fromarray((nr.random((H // 16 + 1, W // 16 + 1)) * 255).astype(np.uint8))
                        .resize((W, H), Image.BILINEAR), dtype=np.float32) / 255
    tone = tone - rng.uniform(0.0, 0.08) * blotch
    ink_tone = rng.uniform(0.05, 0.3)
    page = tone - ink * (tone - ink_tone)
    page = page + nr.normal(0, rng.uniform(0.01, 0.04), (H, W))
    return np.clip(page, 0, 1), moved


def render_pair(rng, same, small=False):
    """Two pages: one table in two renderings (same) or two tables (different); small: 3 columns
    of 6 rows in one block at 14-16 px."""
    faces = rng.sample(sorted(FACES), 2)
    t1 = random_table(rng, small)
    t2 = t1 if same else random_table(rng, small)
    pages = []
    for table, face in zip((t1, t2), faces):
        size = rng.randint(14, 16) if small else rng.randint(14, 24)
        pages.append((table, face, size) + render_page(table, face, size, rng, {"blocks": 1} if small else None))
    return pages


def bigram_boxes(digits, numbers):
    """The page's digit pairs as labelled boxes: each two adjacent digits of a number, in reading
    order ("45" in 145 and in 457), boxed by the union of their two boxes."""
    boxes = []
    for idx in numbers:
        for i, j in zip(idx, idx[1:]):
            a, b = digits[i], digits[j]
            boxes.append({"label": f"{a[0]}{b[0]}",
                          "box": [round(min(a[3], b[3]), 2), round(min(a[4], b[4]), 2),
                                  round(max(a[5], b[5]), 2), round(max(a[6], b[6]), 2)]})
    return boxes


def write_atomic(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def save_png(a, path):
    tmp = path + ".tmp"
    Image.fromarray((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)).save(tmp, format="PNG")
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--pairs", type=int, default=60, help="pairs, half sharing a table")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--small", action="store_true", help="small tables (3 columns, 6 rows, one block, 14-16 px): quick test pairs")
    args = ap.parse_args()
    check_faces()
    os.makedirs(args.out, exist_ok=True)
    rng = random.Random(args.seed)
    meta = []
    csv = ["name,first,second,related,first_labels,second_labels"]
    for i in range(args.pairs):
        same = i % 2 == 0
        entry = {"same": same, "pages": []}
        files = []
        for side, (table, face, size, page, digits, numbers, lay) in zip("ab", render_pair(rng, same, args.small)):
            name = f"pair_{i:03d}_{side}.png"
            save_png(page, os.path.join(args.out, name))
            entry["pages"].append({"file": name, "face": face, "size": size, "layout": lay, "title": table["title"],
                                   "digits": [[d[0]] + [round(v, 2) for v in d[1:]] for d in digits],
                                   "numbers": numbers})
            files.append(name)
            if same:
                labels = name.replace(".png", ".bigrams.json")
                write_atomic(os.path.join(args.out, labels), json.dumps({"boxes": bigram_boxes(digits, numbers)}))
                files.append(labels)
        # Bigram labels on the pairs that share a table (their top pairs should join equal digit
        # pairs); the unrelated pairs count for the similarity's separation.
        a, al, b, bl = files if same else (files[0], "", files[1], "")
        csv.append(f"pair_{i:03d},{a},{b},{'true' if same else 'false'},{al},{bl}")
        meta.append(entry)
    write_atomic(os.path.join(args.out, "pairs.csv"), "\n".join(csv) + "\n")
    with open(os.path.join(args.out, "pairs.json.tmp"), "w") as f:
        json.dump({"seed": args.seed, "faces": FACES, "pairs": meta}, f)
    os.replace(os.path.join(args.out, "pairs.json.tmp"), os.path.join(args.out, "pairs.json"))
    print(f"make-tables: {args.pairs} pairs in {args.out}")


if __name__ == "__main__":
    main()
