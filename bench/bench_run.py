"""Whole-process benchmark: ``alignment-probe run`` as a user runs it, each command in a fresh subprocess.

    python bench/bench_run.py --baseline 6ee59a4     # issue 15's targets, this tree beside an older commit
    python bench/bench_run.py --only llama8          # just fast vs --engine reference on the 8-layer d512 pair
    python bench/bench_run.py --only llama8 --backend bridge   # the same on TransformerBridge (run with 4.x's python)

Each command runs in a fresh subprocess (imports, loading, scoring, patching, tables, report: the
whole run); wall time, CPU time and that process's peak resident memory (``os.wait4``) are recorded
with the 1-minute load average at its start, and the engine's block-token work (``engine_work`` in
the run's manifest). This process stays small (no model, no torch): Linux hands a process's peak RSS
down to the processes it starts, so checkpoints are built in child processes. ``--baseline REV`` runs the same commands on the code of an older commit
(``git archive`` into a temporary folder, first on ``PYTHONPATH``), alternating with this tree, so
before and after are measured side by side under the same load. Raw output goes to
``bench/results/`` (``run-*.log``, and the numbers in ``--out``, default ``bench-run.json``).

Parts (``--only``; default: all but ``llama8``):

* ``startup``: bad input refused (a missing ``--data`` file), ``run --help``;
* ``refusal``: ``--n-pairs`` more than the pairs that fit ``--max-length`` on the bundled pair, and,
  with ``--llama1b``, on a Llama-3.2-1B-shaped pair planted in a temporary Hugging Face cache
  (bench_load_llama1b.py; 2 x 2.5 GB): refused before any weights load?
* ``bundled``: the bundled default ``run --out DIR`` (80 pairs, the whole default suite, report) under
  each ``--layouts`` layout (``default``: the command as a user types it, no thread setting: one thread and
  ``--procs auto``'s processes; ``1``: OMP_NUM_THREADS=1, hence one process; ``2p``: two
  processes of one thread, ``torchrun --standalone --nproc_per_node 2``);
* ``memory``: the bundled default on 16 and on 80 pairs, peak RSS (1 thread);
* ``llama8``: the 8-layer d_model-512 random Llama pair (8 HH pairs <= 400 tokens), fast vs
  ``--engine reference``, and the largest difference between their effects. With ``--baseline``, the fast
  engine of both codes, alternating, ``--repeats`` times each; the reference engine (whose code both share)
  once, on this tree.

With ``--baseline``, each bundled run's tables are compared with the baseline's of the same repeat
(``tables_vs_baseline``: the largest difference of any numeric column of each ``*.parquet``, and whether
``summary.json`` is the same bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
# the real HH-RLHF data: $ALIGNMENT_PROBE_HH_DIR (as the tests read it), else ../shared beside the checkout
HH = (
    (
        Path(os.environ["ALIGNMENT_PROBE_HH_DIR"])
        if os.environ.get("ALIGNMENT_PROBE_HH_DIR")
        else ROOT.parent / "shared" / "data" / "hh-rlhf"
    )
    / "harmless-base"
    / "test.jsonl.gz"
)
PARTS = ("startup", "refusal", "bundled", "memory", "llama8")
BACKEND_ARGS: list[str] = []  # --backend X, appended to every `run` command (set by main)


def build_llama8(cache: Path) -> tuple[Path, Path]:
    """The 8-layer d512 random pair as two checkpoint folders (built once, then reused). Call it in a child
    process (``--_build-llama8``): see :func:`plant_llama1b` on peak RSS."""
    base, tuned = cache / "llama8-d512-base", cache / "llama8-d512-tuned"
    if (tuned / "config.json").exists():
        return base, tuned
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(ROOT))
    from alignment_probe.data import load_pairs
    from alignment_probe.organisms.build.tokenizer import train_tokenizer

    pairs, _ = load_pairs(HH)
    tok = train_tokenizer([p.prompt + p.chosen for p in pairs[:2000]], vocab_size=4096)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    gen = torch.Generator().manual_seed(1)
    for path, m in ((base, model), (tuned, None)):
        if m is None:  # the twin: noise in blocks 3-4
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if ".layers.3." in name or ".layers.4." in name:
                        p.add_(0.05 * p.std() * torch.randn(p.shape, generator=gen))
        path.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(path, safe_serialization=True)
        tok.save_pretrained(path)
    return base, tuned


def engine_work(out: Path) -> dict | None:
    """computed/floor per stage and for the whole run, from the run's manifest (absent before issue 15's bench)."""
    try:
        work = json.loads((out / "manifest.json").read_text()).get("engine_work")
    except (OSError, ValueError):
        return None
    if not work:
        return None
    total = {k: sum(w[k] for w in work.values()) for k in ("computed", "floor", "forwards")}
    return {**work, "all": total} | {
        "ratio": {
            s: round(w["computed"] / w["floor"], 4) if w["floor"] else None for s, w in {**work, "all": total}.items()
        }
    }


def timed(
    name: str,
    argv: list[str],
    *,
    code: Path | None = None,
    env: dict | None = None,
    out: Path | None = None,
    nproc: int = 1,
) -> dict:
    """Run one CLI command in a fresh process: wall and CPU seconds, peak RSS (GiB), exit code; log kept.
    ``code``: a folder holding another version of the package (first on PYTHONPATH); ``env``: extra variables;
    ``nproc`` > 1: launched as ``torchrun --standalone --nproc_per_node nproc`` (one logical run; CPU time and
    peak RSS then cover the launcher and its workers as ``wait4`` reports them)."""
    full_env = (
        os.environ
        | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1"}
        | (env or {})
    )
    if code is not None:
        full_env["PYTHONPATH"] = os.pathsep.join([str(code), *filter(None, [os.environ.get("PYTHONPATH")])])
    RESULTS.mkdir(parents=True, exist_ok=True)
    if BACKEND_ARGS:  # logs of another backend kept beside this one's
        name = f"{name}-{BACKEND_ARGS[1]}"
    log = RESULTS / f"run-{name}.log"
    if argv[:1] == ["run"]:
        argv = [*argv, *BACKEND_ARGS]
    load = os.getloadavg()[0]
    with open(log, "w") as fh:
        t0 = time.perf_counter()
        launcher = (
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                str(nproc),
                "-m",
                "alignment_probe",
            ]
            if nproc > 1
            else [sys.executable, "-m", "alignment_probe.cli"]
        )
        proc = subprocess.Popen([*launcher, *argv], cwd=code or ROOT, env=full_env, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    row = {
        "name": name,
        "argv": argv,
        "env": env or {},
        "code": "baseline" if code else "this tree",
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_gib": round(usage.ru_maxrss / 2**20, 3),
        "rc": os.waitstatus_to_exitcode(status),
        "log": str(log.relative_to(ROOT)),
        "load_before": round(load, 2),
    }
    if out is not None:
        row["engine_work"] = engine_work(out)
    print(
        f"{name:>34}: {row['wall_s']:7.2f} s wall {row['cpu_s']:7.2f} s CPU {row['peak_rss_gib']:.2f} GiB "
        f"rc {row['rc']} [load {load:.1f}]",
        flush=True,
    )
    return row


def weights_loaded(row: dict) -> bool:
    """Whether the run's log shows a model loading (transformers' progress, TransformerLens's device line)."""
    text = (ROOT / row["log"]).read_text(errors="replace")
    return "Loading weights" in text or "Moving model to device" in text


def checkout(rev: str) -> Path:
    """The package and data of commit ``rev`` in a temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix=f"bench-baseline-{rev[:10]}-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def max_effect_difference(a: Path, b: Path) -> float | None:
    import pandas as pd

    ea, eb = pd.read_parquet(a / "effects.parquet"), pd.read_parquet(b / "effects.parquet")
    keys = ["experiment", "hook", "scope", "sides", "layer", "param", "split", "pair_id"]
    if not ea[keys].equals(eb[keys]):
        return None
    return float((ea.effect - eb.effect).abs().max())


def tables_difference(a: Path, b: Path) -> dict:
    """Per ``*.parquet`` of run directory ``a``: the largest |difference| of any numeric column against ``b``'s
    (None where the rows or columns differ), and whether the two ``summary.json`` are the same bytes."""
    import numpy as np
    import pandas as pd

    out: dict = {}
    for path in sorted(a.glob("*.parquet")):
        other = b / path.name
        if not other.exists():
            out[path.name] = None
            continue
        ta, tb = pd.read_parquet(path), pd.read_parquet(other)
        if list(ta.columns) != list(tb.columns) or len(ta) != len(tb):
            out[path.name] = None
            continue
        numeric = [c for c in ta.columns if pd.api.types.is_numeric_dtype(ta[c])]
        text = [c for c in ta.columns if c not in numeric]
        if not ta[text].equals(tb[text]):
            out[path.name] = None
            continue
        diffs = [float(np.nanmax(np.abs(ta[c].to_numpy(float) - tb[c].to_numpy(float)), initial=0.0)) for c in numeric]
        out[path.name] = max(diffs, default=0.0)
    sa, sb = a / "summary.json", b / "summary.json"
    out["summary.json identical"] = sa.exists() and sb.exists() and sa.read_bytes() == sb.read_bytes()
    return out


def plant_llama1b(cache: Path) -> None:
    """bench_load_llama1b.py's planted pair, made in a child process: a process's peak RSS is inherited by
    the processes it starts (Linux keeps ru_maxrss across fork and exec), so this one must stay small."""
    code = (
        f"import sys; sys.path[:0] = [{str(ROOT / 'bench')!r}, {str(ROOT)!r}]; from bench_load_llama1b import plant; "
        f"from pathlib import Path; plant(Path({str(cache)!r}))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def main() -> int:
    if sys.argv[1:2] == ["--_build-llama8"]:  # in a child process: see plant_llama1b
        build_llama8(Path(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=PARTS, action="append", help="parts to run (repeatable)")
    parser.add_argument("--baseline", default=None, help="also run the older commit REV, side by side")
    parser.add_argument(
        "--layouts",
        default="default,1,2p",
        help="layouts of the bundled default run: default (torch's threads), N (threads), "
        "Np (N processes of 1 thread, torchrun)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs of the bundled default per layout and code")
    parser.add_argument("--llama1b", action="store_true", help="also time the refusal on a planted 1B-shaped pair")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "alignment-probe-bench")
    parser.add_argument("--keep", action="store_true", help="keep the run directories")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench-run.json", help="where the numbers go")
    parser.add_argument(
        "--backend",
        default=None,
        help="passed to every `run` command as --backend (hooked|bridge|auto); the line is this python's",
    )
    args = parser.parse_args()
    global BACKEND_ARGS
    BACKEND_ARGS = ["--backend", args.backend] if args.backend else []
    parts = args.only or [p for p in PARTS if p != "llama8"]
    work = Path(tempfile.mkdtemp(prefix="bench-run-"))
    codes = {"after": None} | ({"before": checkout(args.baseline)} if args.baseline else {})
    results: dict = {
        "date": str(date.today()),
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "baseline": args.baseline,
        "backend": args.backend,
        "python": sys.executable,
        "head": subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
    }
    try:
        if "startup" in parts:
            results["startup"] = {
                label: timed(
                    f"bad-data-{label}",
                    ["run", "--data", str(work / "missing.jsonl"), "--out", str(work / "refused")],
                    code=code,
                )
                for label, code in codes.items()
            } | {"help": timed("help", ["run", "--help"])}
        if "refusal" in parts:
            # More pairs asked for than fit --max-length (78 of the bundled 256 fit 40 tokens; ~1500 of HH
            # harmless-base's 2312 fit 64 tokens of the planted tokenizer): refused after tokenising.
            bad = ["run", "--n-pairs", "80", "--max-length", "40", "--out", str(work / "refused-n")]
            rows = {label: timed(f"bad-n-pairs-bundled-{label}", bad, code=code) for label, code in codes.items()}
            results["refusal"] = {"bundled": {k: r | {"weights_loaded": weights_loaded(r)} for k, r in rows.items()}}
            if args.llama1b:
                with tempfile.TemporaryDirectory(prefix="bench-llama1b-") as cache:
                    plant_llama1b(Path(cache))
                    argv = [
                        "run",
                        "--base",
                        "meta-llama/Llama-3.2-1B",
                        "--tuned",
                        "meta-llama/Llama-3.2-1B-Instruct",
                        "--data",
                        str(HH),
                        "--n-pairs",
                        "2000",
                        "--max-length",
                        "64",
                        "--out",
                        str(work / "r1b"),
                    ]
                    r = timed("bad-n-pairs-llama1b-after", argv, env={"HF_HUB_CACHE": cache})
                    results["refusal"]["llama1b"] = {"after": r | {"weights_loaded": weights_loaded(r)}}
        if "bundled" in parts:
            runs: dict = {}
            for rep in range(args.repeats):
                for layout in args.layouts.split(","):
                    # "default": torch's thread count; "N": OMP_NUM_THREADS=N; "Np": N processes of 1 thread (torchrun)
                    nproc = int(layout[:-1]) if layout.endswith("p") else 1
                    threads = "1" if nproc > 1 else layout
                    env = {} if layout == "default" else {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
                    for label, code in codes.items():  # alternating, so both see the same load
                        out = work / f"default-{label}-{layout}-{rep}"
                        row = timed(
                            f"bundled-default-{layout}{'' if nproc > 1 else 't'}-{label}-{rep}",
                            ["run", "--out", str(out)],
                            code=code,
                            env=env,
                            out=out,
                            nproc=nproc,
                        )
                        runs.setdefault(f"{layout} threads", {}).setdefault(label, []).append(row)
                    if "before" in codes:  # this repeat's tables, after vs before
                        row = runs[f"{layout} threads"]["after"][-1]
                        row["tables_vs_baseline"] = tables_difference(
                            work / f"default-after-{layout}-{rep}", work / f"default-before-{layout}-{rep}"
                        )
                        print(f"{'tables vs baseline':>34}: {row['tables_vs_baseline']}", flush=True)
                    if not args.keep:
                        for label in codes:
                            shutil.rmtree(work / f"default-{label}-{layout}-{rep}", ignore_errors=True)
            results["bundled_default"] = runs
        if "memory" in parts:  # 1 thread: memory does not depend on it, and it is the quickest here
            one = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            results["memory"] = {
                label: {
                    f"{n} pairs": timed(
                        f"bundled-{n}-pairs-{label}",
                        ["run", "--n-pairs", str(n), "--out", str(work / f"m{n}-{label}")],
                        code=code,
                        env=one,
                        out=work / f"m{n}-{label}",
                    )
                    for n in (16, 80)
                }
                for label, code in codes.items()
            }
        if "llama8" in parts:
            if not HH.exists():
                print(f"skip llama8: {HH} not found")
            else:
                subprocess.run([sys.executable, __file__, "--_build-llama8", str(args.cache)], check=True)
                base, tuned = args.cache / "llama8-d512-base", args.cache / "llama8-d512-tuned"
                common = [
                    "run",
                    "--base",
                    str(base),
                    "--tuned",
                    str(tuned),
                    "--data",
                    str(HH),
                    "--n-pairs",
                    "8",
                    "--max-length",
                    "400",
                    "--experiments",
                    "patch_tuned_to_base",
                    "--n-boot",
                    "200",
                ]
                l8: dict = {
                    "reference": timed(
                        "llama8-reference",
                        common + ["--engine", "reference", "--out", str(work / "llama8-reference")],
                        out=work / "llama8-reference",
                    )
                }
                for rep in range(args.repeats if args.baseline else 1):
                    for label, code in codes.items():  # alternating, so both see the same load
                        out = work / f"llama8-fast-{label}-{rep}"
                        row = timed(
                            f"llama8-fast-{label}-{rep}",
                            common + ["--engine", "fast", "--out", str(out)],
                            code=code,
                            out=out,
                        )
                        row["speedup_vs_reference"] = round(l8["reference"]["wall_s"] / row["wall_s"], 2)
                        row["max_effect_difference_vs_reference"] = max_effect_difference(
                            work / "llama8-reference", out
                        )
                        l8.setdefault(f"fast-{label}", []).append(row)
                fast = l8["fast-after"]
                results["llama8"] = l8 | {
                    "speedup": round(l8["reference"]["wall_s"] / min(r["wall_s"] for r in fast), 2),
                    "max_effect_difference": (
                        None
                        if any(r["max_effect_difference_vs_reference"] is None for r in fast)
                        else max(r["max_effect_difference_vs_reference"] for r in fast)
                    ),
                }
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        for code in codes.values():
            if code is not None:
                shutil.rmtree(code, ignore_errors=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
