#!/usr/bin/env bash
# The prepared GPU check (issue 26), one command: bench/gpu.sh [--shape tiny] [--device cpu] [--pairs N] ...
# (the options are bench/gpu.py's; defaults: the Llama-3.2-1B shape, the GPU where visible, 80 pairs).
#
# Each TransformerLens line lives in its own interpreter (3.9: the hooked backend; 4.x: the bridge backend).
# Which interpreters run, in order of precedence:
#   AP_BENCH_PYTHONS="py1 py2"   one per line, as given;
#   .whl/tl3/ and .whl/tl4/      wheel folders made by bench/gpu_wheels.sh (for the device machine, which reaches
#                                no registry): each is installed with --target beside the machine's own torch;
#   otherwise                    python3 alone: the one line installed there, and the summary says so.
# Prints the summary (bench/gpu.py summary) at the end; exit 1 when the backends' numbers differ beyond the dtype's
# tolerance, 2 when nothing could be measured. Results stay in $AP_BENCH_WORK (default: a new temporary folder).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${AP_BENCH_WORK:-$(mktemp -d -t ap-gpu-XXXXXX)}"
mkdir -p "$WORK"
SECONDS=0

pythons=()
if [[ -n "${AP_BENCH_PYTHONS:-}" ]]; then
    read -r -a pythons <<<"$AP_BENCH_PYTHONS"
elif [[ -d "$REPO/.whl/tl3" && -d "$REPO/.whl/tl4" ]]; then
    for line in tl3 tl4; do
        site="$WORK/site-$line"
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$REPO"/.whl/common/*.whl "$REPO"/.whl/$line/*.whl
        wrapper="$WORK/python-$line"
        printf '#!/usr/bin/env bash\nPYTHONPATH=%q:%q${PYTHONPATH:+:$PYTHONPATH} exec python3 "$@"\n' "$site" "$REPO" >"$wrapper"
        chmod +x "$wrapper"
        pythons+=("$wrapper")
    done
    echo "installed both lines from .whl/ ($SECONDS s)"
else
    pythons=(python3)
    echo "one interpreter (python3): only its TransformerLens line runs; see the top of bench/gpu.sh for both"
fi

export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1
"${pythons[0]}" "$REPO/bench/gpu.py" build --work "$WORK" "$@"
results=()
for i in "${!pythons[@]}"; do
    out="$WORK/measure-$i.json"
    echo "measuring with ${pythons[$i]} ($SECONDS s so far)"
    if "${pythons[$i]}" "$REPO/bench/gpu.py" measure --work "$WORK" --out "$out" "$@"; then
        results+=("$out")
    else
        echo "measure failed with ${pythons[$i]} (exit $?): its rows are missing from the summary" >&2
    fi
done
echo "measured in $SECONDS s; summary:"
echo
"${pythons[0]}" "$REPO/bench/gpu.py" summary --work "$WORK" --summary-json "$WORK/summary.json" "$@" "${results[@]}"
