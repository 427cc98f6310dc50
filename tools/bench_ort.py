#!/usr/bin/env python3
"""Dev-only: time a model bundle's ONNX files in onnxruntime beside tract (our engine).

Not part of the product or of CI. Needs `pip install onnxruntime numpy` (a venv, e.g.
`python3 -m venv /tmp/ortvenv && /tmp/ortvenv/bin/pip install onnxruntime numpy`).

For a bundle directory (ensemble.json + ONNX files) it loads each member file and the
stacker in onnxruntime (CPU provider, intra-op threads = --threads, inter-op 1, sequential
execution), and times at batch 1 each member alone and the whole ensemble the way the
engine runs it: the members one after another, sigma(logit) per member + the clinical
features, the stacker. Every output of a member is computed (logit, cam, fmap), as in the
engine. p50/p95 over --iters runs after one warm-up run.

Inputs: `--inputs DIR` reads `x.f32` (the member input, [1, 1, S, S]) and `clinical.f32`
(the stacker's clinical features), raw little-endian f32, as written by
`tirp predict bench --dump DIR` (the engine's preprocessing of its synthetic bench
radiograph; age 30, female, tibia); otherwise a seeded N(0, 1) input and that clinical
encoding.

With `--tract BIN` it is the side-by-side driver: for each round and each thread count it
runs `BIN --json predict bench --bundle DIR --threads T --iters N --dump TMP` (tract), then
onnxruntime on the very inputs tract dumped, alternately; it prints per-row min-of-medians
(and min-of-p95s) over the rounds, the ratio tract/ort, and output parity (max |logit diff|
per member, |probability diff|) between tract's graphs and onnxruntime's.

  tools/bench_ort.py --bundle models/bundle --threads 1                  # ort alone
  tools/bench_ort.py --bundle models/bundle --tract /root/.cache/tirp-target/debug/tirp \\
      --threads 1 2 --rounds 3 --iters 50                              # side by side
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    import onnxruntime as ort
except ImportError:  # pragma: no cover - dev tool
    sys.exit("bench_ort.py needs onnxruntime: pip install onnxruntime numpy")


def clinical_from_names(names):
    """The engine's clinical encoding (firmware/src/clinical.rs) for age 30, female, tibia."""
    values = {
        "age/50": 30.0 / 50.0,
        "age_missing": 0.0,
        "male": 0.0,
        "sex_missing": 0.0,
        "site_missing": 0.0,
    }
    out = []
    for n in names:
        if n.startswith("site="):
            out.append(1.0 if n == "site=tibia" else 0.0)
        elif n in values:
            out.append(values[n])
        else:
            raise SystemExit(f"unknown stacker feature {n!r} in ensemble.json")
    return np.array(out, dtype=np.float32)


def load_inputs(bundle_spec, inputs_dir, seed):
    s = int(bundle_spec["preprocess"]["input_size"])
    n_members = len(bundle_spec["members"])
    tail_names = bundle_spec["stacker"]["features"][n_members:]
    if inputs_dir is not None:
        d = Path(inputs_dir)
        x = np.fromfile(d / "x.f32", dtype="<f4")
        if x.size != s * s:
            raise SystemExit(f"{d / 'x.f32'}: {x.size} values, expected {s}x{s}")
        clinical = np.fromfile(d / "clinical.f32", dtype="<f4")
        if clinical.size != len(tail_names):
            raise SystemExit(
                f"{d / 'clinical.f32'}: {clinical.size} values, expected {len(tail_names)}"
            )
        return x.reshape(1, 1, s, s).astype(np.float32), clinical.astype(np.float32)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, 1, s, s)).astype(np.float32)
    return x, clinical_from_names(tail_names)


OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
# Session settings (set by main from --ort-opt / --ort-no-spin).
ORT = {"opt": "all", "spin": True}


def session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = OPT_LEVELS[ORT["opt"]]
    if not ORT["spin"]:
        # Each session has its own intra-op pool; spinning pools of the other members'
        # sessions compete for the cores between runs.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def stats(values):
    v = sorted(values)
    # The same percentile rule as `tirp predict bench` (nearest rank on n-1).
    pick = lambda q: v[int(round((len(v) - 1) * q))]
    return {"p50_ms": pick(0.5), "p95_ms": pick(0.95)}


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.float32(z)))


def bench_ort(bundle, threads, iters, inputs_dir=None, seed=0):
    bundle = Path(bundle)
    spec = json.loads((bundle / "ensemble.json").read_text())
    x, clinical = load_inputs(spec, inputs_dir, seed)
    errors = {}
    t0 = time.perf_counter()
    members = []
    for m in spec["members"]:
        try:
            members.append((m["name"], m["file"], session(bundle / m["file"], threads)))
        except Exception as e:  # noqa: BLE001 - report and go on with the others
            errors[m["name"]] = f"{type(e).__name__}: {e}"
    try:
        stacker = session(bundle / spec["stacker"]["file"], threads)
        stacker_in = stacker.get_inputs()[0].name
    except Exception as e:  # noqa: BLE001
        stacker = None
        errors["stacker"] = f"{type(e).__name__}: {e}"
    cold_ms = (time.perf_counter() - t0) * 1e3
    complete = stacker is not None and len(members) == len(spec["members"])

    def run_once(times):
        start = time.perf_counter()
        logits = []
        for _, _, sess in members:
            t = time.perf_counter()
            out = sess.run(None, {"x": x})  # every output, as the engine computes them
            times.append((time.perf_counter() - t) * 1e3)
            logits.append(float(out[0].reshape(-1)[0]))
        p = None
        if complete:
            features = np.concatenate(
                [np.array([sigmoid(l) for l in logits], dtype=np.float32), clinical]
            ).reshape(1, -1)
            t = time.perf_counter()
            out = stacker.run(None, {stacker_in: features})
            times.append((time.perf_counter() - t) * 1e3)
            p = float(np.asarray(out[0]).reshape(-1)[0])
            times.append((time.perf_counter() - start) * 1e3)
        return logits, p

    logits, probability = run_once([])
    runs = []
    for _ in range(iters):
        t = []
        run_once(t)
        runs.append(t)
    n = len(members)
    result = {
        "runtime": f"onnxruntime {ort.__version__}",
        "threads": threads,
        "ort_options": {"graph_optimization": ORT["opt"], "spinning": ORT["spin"]},
        "batch": 1,
        "cold_start_ms": cold_ms,
        "inputs": str(inputs_dir) if inputs_dir else f"seeded N(0,1), seed {seed}",
        "members": [
            dict(name=name, file=f, logit=logits[i], **stats([r[i] for r in runs]))
            for i, (name, f, _) in enumerate(members)
        ],
        "errors": errors,
    }
    # The members alone, one after another (the yardstick for the engine's flag).
    result["members_sequential"] = stats([sum(r[:n]) for r in runs])
    if complete:
        result["stacker"] = dict(file=spec["stacker"]["file"], **stats([r[n] for r in runs]))
        result["ensemble_sequential"] = dict(
            probability=probability, **stats([r[n + 1] for r in runs])
        )
    return result


def print_ort(r):
    print(f"{r['runtime']}, {r['threads']} intra-op thread(s), batch 1, inputs: {r['inputs']}, "
          f"options {r['ort_options']}")
    print(f"  cold start (sessions): {r['cold_start_ms']:.1f} ms")
    rows = [(m["name"], m, f"   logit {m['logit']:.6g}") for m in r["members"]]
    if "stacker" in r:
        rows.append(("stacker", r["stacker"], ""))
        e = r["ensemble_sequential"]
        rows.append(("ensemble", e, f"   probability {e['probability']:.6g}"))
    for name, v, extra in rows:
        print(f"  {name:<11} p50 {v['p50_ms']:>8.2f} ms   p95 {v['p95_ms']:>8.2f} ms{extra}")
    for k, e in r["errors"].items():
        print(f"  {k}: FAILED in onnxruntime: {e}")


def tract_bench(binary, bundle, threads, iters, dump):
    cmd = [binary, "--json", "predict", "bench", "--bundle", str(bundle),
           "--threads", str(threads), "--iters", str(iters), "--dump", str(dump)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr}")
    return json.loads(out.stdout), " ".join(cmd)


def side_by_side(args):
    rounds = {t: {"tract": [], "ort": []} for t in args.threads}
    load = [os.getloadavg()]
    commands = []
    with tempfile.TemporaryDirectory(prefix="bench-ort-") as tmp:
        for k in range(args.rounds):
            for t in args.threads:
                tr, cmd = tract_bench(args.tract, args.bundle, t, args.iters, tmp)
                if k == 0:
                    commands.append(cmd.replace(tmp, "TMP"))
                rounds[t]["tract"].append(tr)
                rounds[t]["ort"].append(bench_ort(args.bundle, t, args.iters, tmp))
                load.append(os.getloadavg())
                print(f"round {k + 1}/{args.rounds}, {t} thread(s): done, "
                      f"load {load[-1][0]:.2f}", file=sys.stderr)
    return rounds, load, commands


def summarise(rounds, load, commands, args):
    """Min over rounds of each p50 and of each p95, per row; ratio = tract / ort (p50)."""
    def best(samples, key):
        return {q: min(s[key][q] for s in samples) for q in ("p50_ms", "p95_ms")}

    def best_member(samples, i):
        return {q: min(s["members"][i][q] for s in samples) for q in ("p50_ms", "p95_ms")}

    out = {"tract_runs": [], "threads": {}, "load_average": load, "commands": commands}
    for t, r in rounds.items():
        tr, o = r["tract"], r["ort"]
        rows = []
        names = [m["name"] for m in tr[0]["graphs"]["members"]]
        ort_names = [m["name"] for m in o[0]["members"]]
        for i, name in enumerate(names):
            a = best_member([s["graphs"] for s in tr], i)
            b = best_member(o, ort_names.index(name)) if name in ort_names else None
            rows.append((name, a, b))
        a = best([s["graphs"] for s in tr], "stacker")
        b = best(o, "stacker") if "stacker" in o[0] else None
        rows.append(("stacker", a, b))
        a = best([s["graphs"] for s in tr], "ensemble_sequential")
        b = best(o, "ensemble_sequential") if "ensemble_sequential" in o[0] else None
        rows.append(("ensemble (sequential)", a, b))
        engine = {
            stage: best([s["stages"] for s in tr], stage)
            for stage in ("members", "stacker", "end_to_end")
        }
        # The engine's flag (its members stage, in parallel on T threads, + its stacker
        # stage; sum of the two p50s) against onnxruntime running the members alone.
        flag_ms = engine["members"]["p50_ms"] + engine["stacker"]["p50_ms"]
        ort_members = best(o, "members_sequential")["p50_ms"]
        # Parity on the same input (the last round's dump): tract's graphs vs ort.
        parity = {}
        last_t, last_o = tr[-1]["graphs"], o[-1]
        for m in last_t["members"]:
            om = next((x for x in last_o["members"] if x["name"] == m["name"]), None)
            if om is not None:
                parity[m["name"]] = abs(m["logit"] - om["logit"])
        if "ensemble_sequential" in last_o:
            parity["probability"] = abs(
                last_t["ensemble_sequential"]["probability"]
                - last_o["ensemble_sequential"]["probability"]
            )
        out["threads"][t] = {
            "rows": [{"name": n, "tract": a, "ort": b} for n, a, b in rows],
            "engine_predict": engine,
            "flag_vs_ort_members": {
                "engine_flag_p50_ms": flag_ms,
                "ort_members_alone_p50_ms": ort_members,
                "ratio": flag_ms / ort_members,
            },
            "parity_abs_diff": parity,
            "tract_logits": {m["name"]: m["logit"] for m in last_t["members"]},
            "ort_logits": {m["name"]: m["logit"] for m in last_o["members"]},
            "ort_errors": o[0]["errors"],
            "tract_cold_start_ms": min(s["cold_start_ms"] for s in tr),
            "ort_cold_start_ms": min(s["cold_start_ms"] for s in o),
        }
    return out


def print_summary(s, args):
    first = next(iter(s["raw"].values()))["ort"][0]
    print(f"bundle {args.bundle}; {args.rounds} rounds x {args.iters} runs, tract and "
          f"onnxruntime {ort.__version__} alternately; min over rounds of p50 and of p95 (ms); "
          f"onnxruntime options {first.get('ort_options', {'graph_optimization': 'all', 'spinning': True})}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; load average (1 min) "
          f"before/after each round: " + ", ".join(f"{l[0]:.2f}" for l in s["load_average"]))
    for t, r in s["threads"].items():
        print(f"\n{t} thread(s) (onnxruntime intra-op {t}; tract runs each graph on one thread)")
        print(f"  {'graph':<22} {'tract p50/p95':>16} {'ort p50/p95':>16} {'tract/ort':>9}")
        for row in r["rows"]:
            a, b = row["tract"], row["ort"]
            bt = f"{b['p50_ms']:.2f}/{b['p95_ms']:.2f}" if b else "failed"
            ratio = f"{a['p50_ms'] / b['p50_ms']:.2f}" if b and b["p50_ms"] > 0 else "-"
            print(f"  {row['name']:<22} {a['p50_ms']:>7.2f}/{a['p95_ms']:<8.2f} "
                  f"{bt:>16} {ratio:>9}")
        e = r["engine_predict"]
        print(f"  tract engine (`predict`, {t} thread(s)): members p50/p95 "
              f"{e['members']['p50_ms']:.2f}/{e['members']['p95_ms']:.2f}, end to end "
              f"{e['end_to_end']['p50_ms']:.2f}/{e['end_to_end']['p95_ms']:.2f}")
        g = r["flag_vs_ort_members"]
        print(f"  engine flag (members + stacker stages, {t} thread(s)) "
              f"{g['engine_flag_p50_ms']:.2f} ms vs onnxruntime members alone "
              f"{g['ort_members_alone_p50_ms']:.2f} ms: {g['ratio']:.2f}")
        print(f"  cold start: tract {r['tract_cold_start_ms']:.0f} ms (engine), "
              f"ort {r['ort_cold_start_ms']:.0f} ms (sessions)")
        print("  parity |tract - ort|: " + ", ".join(
            f"{k} {v:.3g}" for k, v in r["parity_abs_diff"].items()))
        for k, e in r["ort_errors"].items():
            print(f"  {k}: FAILED in onnxruntime: {e}")
    print("\ntract commands (TMP = the dump directory ort reads):")
    for c in s["commands"]:
        print("  " + c)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, help="bundle directory (ensemble.json)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--inputs", help="directory with x.f32 and clinical.f32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tract", help="the `tirp` binary: run tract and ort alternately")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print JSON")
    ap.add_argument("--ort-opt", choices=sorted(OPT_LEVELS), default="all",
                    help="onnxruntime graph optimisation level (default all)")
    ap.add_argument("--ort-no-spin", action="store_true",
                    help="onnxruntime intra-op threads block instead of spinning")
    ap.add_argument("--save", help="with --tract: also write the JSON (every run) here")
    ap.add_argument("--summary", help="print the summary of a --save file and exit")
    args = ap.parse_args()
    ORT.update(opt=args.ort_opt, spin=not args.ort_no_spin)
    if args.summary:
        s = json.loads(Path(args.summary).read_text())
        args.rounds = len(next(iter(s["raw"].values()))["tract"])
        args.iters = s["raw"][next(iter(s["raw"]))]["tract"][0]["iters"]
        print_summary(s, args)
        return
    if args.iters < 1 or args.rounds < 1 or min(args.threads) < 1:
        ap.error("--iters, --rounds and --threads must be at least 1")
    if args.tract:
        rounds, load, commands = side_by_side(args)
        s = summarise(rounds, load, commands, args)
        s["raw"] = rounds
        if args.save:
            Path(args.save).write_text(json.dumps(s, indent=1))
        if args.json:
            print(json.dumps(s, indent=1))
        else:
            print_summary(s, args)
        return
    results = [bench_ort(args.bundle, t, args.iters, args.inputs, args.seed)
               for t in args.threads]
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            print_ort(r)


if __name__ == "__main__":
    main()
