#!/usr/bin/env bash
# Lay both TransformerLens lines' wheels in .whl/ for the device machine, which reaches no package registry:
# .whl/common (the package's needs the machine's image lacks), .whl/tl3 (transformer-lens 3.9) and .whl/tl4 (4.3).
# bench/gpu.sh installs them there with `pip install --target`, beside the image's own CUDA torch.
#
# How: pip resolves the package's requirements with each line's constraints file (here; the versions are the same
# for the device's Python 3.12); what the image already holds (IMAGE_HAS, read off the device notes, 2026-11) and
# what is imported only for training or evaluation (wandb, lm-eval) is left out; the rest is fetched without deps, as cp312 manylinux wheels.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$REPO/.whl"
PY_TAGS=(--python-version 3.12 --implementation cp --only-binary=:all:
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
IMAGE_HAS=" torch triton accelerate transformers tokenizers safetensors huggingface-hub numpy pandas pyarrow scipy
 scikit-learn tqdm einops jaxtyping sentencepiece protobuf rich fsspec xxhash narwhals typing-extensions packaging
 pyyaml requests filelock regex jinja2 markupsafe sympy networkx mpmath certifi charset-normalizer idna urllib3
 python-dateutil pytz tzdata six joblib threadpoolctl aiohttp aiosignal attrs frozenlist multidict yarl propcache
 aiohappyeyeballs psutil wadler-lindig typing-inspect mypy-extensions hf-xet setuptools pip wheel "
SKIP=" wandb lm-eval "
mkdir -p "$OUT"
resolve() {  # resolve NAME CONSTRAINTS -> "name==version" lines that the image lacks
    local report
    report="$(mktemp)"
    # resolved for this machine (its CPU torch has no CUDA libraries to resolve), fetched below for the device's
    python3 -m pip install -q --dry-run --ignore-installed --report "$report" -c "$REPO/constraints/$2" "$REPO" 2>/dev/null
    python3 - "$report" "$IMAGE_HAS$SKIP" <<'PY'
import json, re, sys
skip = set(sys.argv[2].split())
for item in json.load(open(sys.argv[1]))["install"]:
    name = re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower()
    if name not in skip and not name.startswith(("nvidia-", "cuda-")) and name != "alignment-probe":
        print(f"{name}=={item['metadata']['version']}")
PY
}
resolve tl3 cpu.txt | sort >"$OUT/tl3.txt"
resolve tl4 tl4.txt | sort >"$OUT/tl4.txt"
comm -12 "$OUT/tl3.txt" "$OUT/tl4.txt" >"$OUT/common.txt"
for line in tl3 tl4; do comm -23 "$OUT/$line.txt" "$OUT/common.txt" >"$OUT/$line-only.txt"; done
for part in common tl3 tl4; do
    list="$OUT/$part.txt"
    [[ $part != common ]] && list="$OUT/$part-only.txt"
    rm -rf "${OUT:?}/$part" && mkdir -p "$OUT/$part"
    while read -r req; do  # a wheel for the device's Python, else (a pure-Python sdist) one built here
        python3 -m pip download -q --no-deps "${PY_TAGS[@]}" -d "$OUT/$part" "$req" 2>/dev/null ||
            python3 -m pip wheel -q --no-deps -w "$OUT/$part" "$req"
    done <"$list"
done
du -sh "$OUT"/common "$OUT"/tl3 "$OUT"/tl4
echo "carry .whl (under the device tool's 64 MiB with the working tree) and run bench/gpu.sh there"
