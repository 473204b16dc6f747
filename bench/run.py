#!/usr/bin/env python
"""esa_nb benchmarks (not run in CI).

    make bench                          # = .venv/bin/python bench/run.py
    .venv/bin/python bench/run.py --quick
    .venv/bin/python bench/run.py --only metrics,topk

Every measurement runs in a fresh subprocess (so peak memory, ru_maxrss, belongs to that measurement alone). The tables
are printed with a description of the machine, and everything is also written as JSON to bench/results/ (gitignored).

Sections
  load      load time of the embedded model: first load (empty ESA_NB_CACHE: GGUF dequantization) and cached;
            evaluation throughput (tokens/s); Phase 3: one condition (perturb, evaluate, restore, verify) / one evaluation
  metrics   each metric's wall time / a bare forward+backward on the same tokens, and peak memory / weight bytes
  topk      global and per-tensor top-k over 1e8 scores (25 tensors of 4M)
  scaling   forward+backward and grad_x_weight from tiny to small Llama configs, against the model's FLOPs and bytes
  torchrun  esa-runner alone vs torchrun with 1 and 2 processes on this machine
  attribute evaluations the causal-core search uses against k (synthetic effects, and a tiny model with a planted super weight)
  plain     esa_nb against the plain PyTorch script a researcher would write (bench/plain_workflow.py): wall time, peak memory
            and minor page faults (esa-runner tunes glibc's malloc and huge pages first: esa_nb.host);
            esa_nb's time outside the passes, split into the imports any transformers workflow pays and the rest
Finally a projection for Llama-3.1-8B on one H100 from the measured ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
TAG = "BENCH_RESULT "


# ---------------------------------------------------------------------------------------------------------------------
# memory and timing helpers (used inside the workers)

def _rss_now() -> int:
    "Resident set size of this process in bytes (Linux /proc; 0 elsewhere)."
    try:
        with open("/proc/self/statm") as f: return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError: return 0


def _ru_maxrss() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def _trim():
    "Collect garbage and return freed heap memory to the OS (glibc malloc_trim), so resident memory reflects live data."
    import ctypes, gc
    gc.collect()
    try: ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError): pass


class Peak:
    "Peak memory during a block: device memory on CUDA, else resident memory sampled every 2 ms by a thread (after malloc_trim)."
    def __init__(self, device=None): self.device, self.peak, self.before = device, 0, 0

    def __enter__(self):
        import torch
        self.cuda = self.device is not None and self.device.type == "cuda"
        if self.cuda:
            torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device); return self
        _trim()  # give freed memory back to the OS first, so that the baseline is what is live
        self.before = self.peak = _rss_now(); self._stop = False
        def loop():
            while not self._stop:
                self.peak = max(self.peak, _rss_now()); time.sleep(0.002)
        self._t = threading.Thread(target=loop, daemon=True); self._t.start()
        return self

    def __exit__(self, *exc):
        import torch
        if self.cuda:
            torch.cuda.synchronize(); self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop = True; self._t.join(); self.peak = max(self.peak, _rss_now())

    @property
    def extra(self) -> int: return max(0, self.peak - self.before)


def _sync(device):
    import torch
    if device is not None and device.type == "cuda": torch.cuda.synchronize()


def _timed(fn, device=None):
    _sync(device); t = time.perf_counter(); out = fn(); _sync(device)
    return time.perf_counter() - t, out


def _weight_bytes(model) -> int: return sum(p.numel() * p.element_size() for p in model.parameters())


def _find(d, key):
    "The first value of `key` anywhere in a nested dict/list (None if absent)."
    if isinstance(d, dict):
        if key in d: return d[key]
        d = list(d.values())
    for v in d if isinstance(d, list) else []:
        if (r := _find(v, key)) is not None: return r
    return None


def _emit(obj):
    print(TAG + json.dumps(obj), flush=True)


# ---------------------------------------------------------------------------------------------------------------------
# workers (each runs in its own process)

def w_load(a):
    "Load the embedded model (timed); optionally evaluation throughput and one Phase 3 condition."
    t0 = time.perf_counter()
    import torch
    from esa_nb.models import load_model
    t_import = time.perf_counter() - t0
    dt, (model, tok) = _timed(lambda: load_model("smollm2-135m", device=a["device"]))
    out = {"import_s": t_import, "load_s": dt, "rss_after_load": _rss_now(), "ru_maxrss": _ru_maxrss(),
           "weight_bytes": _weight_bytes(model), "n_params": sum(p.numel() for p in model.parameters()),
           "attn": model.esa_info.get("attn_implementation"), "dtype": model.esa_info.get("dtype")}
    if a.get("eval"):
        import argparse as ap
        from esa_nb.data import load_text
        from esa_nb.evaluate import evaluate
        from esa_nb.study import run_condition
        from esa_nb.config import EsaConfig
        from esa_nb.weights import select_weights
        from esa_nb.perturb import perturbed
        dev = next(model.parameters()).device
        data = load_text(tok, "pydoc", a["seq"], max_eval=a["blocks"], max_samples=1)
        E = data.eval
        base = evaluate(model, E, batch_size=a["bs"], progress=False)  # warm-up at full size (allocator, page faults)
        refs = select_weights(model)
        params = {r.name: r.param for r in refs}
        g = torch.Generator().manual_seed(0)
        sel = {r.name: torch.randperm(r.numel, generator=g)[:100].sort().values for r in refs}  # per_layer k=100
        cfg = EsaConfig(perturb="zero", batch_size=a["bs"], no_progress=True, n_boot=2000)
        run_condition(model, params, sel, E, base, cfg.settings, cfg, seed=1)  # warm-up
        pairs = [(_timed(lambda: evaluate(model, E, batch_size=a["bs"], progress=False), dev)[0],
                  _timed(lambda: run_condition(model, params, sel, E, base, cfg.settings, cfg, seed=1), dev)[0]) for _ in range(3)]
        med = lambda v: sorted(v)[len(v) // 2]  # interleaved (evaluation, condition) pairs: medians
        t_eval, tc = med([p[0] for p in pairs]), med([p[1] for p in pairs])
        def just_perturb(verify):
            with perturbed(params, sel, "zero", generator=1, verify=verify): pass
        tp, _ = _timed(lambda: just_perturb("rows"), dev)  # the runner's default: checksums of the touched rows
        tpt, _ = _timed(lambda: just_perturb("tensor"), dev)  # --verify-restore tensor: whole tensors
        out.update(eval_s=t_eval, eval_tokens=int(E.numel()), tokens_per_s=E.numel() / t_eval, ppl=base["ppl"],
                   condition_s=tc, condition_ratio=tc / t_eval, perturb_restore_verify_s=tp, perturb_restore_verify_tensor_s=tpt,
                   n_perturbed=sum(len(v) for v in sel.values()))
    _emit(out)


def _bare_fwd_bwd(model, refs, B, bs):
    "One forward and backward of the mean NLL over B (micro-batches of bs), gradients only on the selected weights."
    from esa_nb.evaluate import sequence_nll
    ps = [r.param for r in refs]
    for p in ps: p.requires_grad_(True)
    try:
        T_tot = B.shape[0] * (B.shape[1] - 1)
        for i in range(0, len(B), bs):
            s, _, _ = sequence_nll(model, B[i:i + bs])
            (s.sum() / T_tot).backward()
    finally:
        for p in ps: p.requires_grad_(False); p.grad = None


def _bare_hvp(model, refs, B, bs, K=1):
    "K textbook Hessian-vector products per micro-batch on one graph (eager attention, full logits): g with graph, then grad(g, z_k)."
    import torch
    from esa_nb.evaluate import sequence_nll
    from esa_nb.metrics import _eager_attention
    ps = [r.param for r in refs]
    for p in ps: p.requires_grad_(True)
    try:
        with _eager_attention(model, []):
            for i in range(0, len(B), bs):
                s, _, _ = sequence_nll(model, B[i:i + bs])
                g = torch.autograd.grad(s.sum(), ps, create_graph=True)
                for k in range(K):  # every probe but the last keeps the graph: its buffers are not freed as the pass goes
                    z = [torch.ones_like(p) for p in ps]
                    hz = torch.autograd.grad(g, ps, z, retain_graph=k < K - 1)
                    del z, hz
                del s, g
    finally:
        for p in ps: p.requires_grad_(False)


def w_metric(a):
    "One metric's wall time against a bare forward+backward on the same tokens, and its memory."
    import torch
    from esa_nb.models import load_model
    from esa_nb.data import load_text
    from esa_nb.weights import select_weights
    from esa_nb.metrics import compute_scores
    model, tok = load_model(a.get("model", "smollm2-135m"), device=a["device"])
    dev = next(model.parameters()).device
    B = load_text(tok, "pydoc", a["seq"], max_samples=a["blocks"], seed=0).calib
    refs = select_weights(model)
    rss_loaded = _rss_now()
    B0 = B[:1, :16]  # a tiny input: the metric's fixed cost per weight (buffers, final pass, checks)
    from esa_nb.evaluate import auto_loss_chunk
    lc = auto_loss_chunk(model) or None  # the runner's default: the loss of a large vocabulary in chunks
    run = lambda X: compute_scores(model, refs, X, a["metric"], batch_size=a["bs"], progress=False,
                                   hutchinson_samples=a["K"], hessian_mc_samples=a["S"], loss_chunk=lc)
    bare = lambda X: _bare_fwd_bwd(model, refs, X, a["bs"])
    bare(B0); run(B0)  # warm-up
    b0 = min(_timed(lambda: bare(B0), dev)[0] for _ in range(2))
    m0 = min(_timed(lambda: run(B0), dev)[0] for _ in range(2 if a["metric"] != "hutchinson_diag" else 1))
    # memory: the first full-size run of each, after malloc_trim (Peak), so freed memory does not hide the peak
    with Peak(dev) as pk_bare: tb, _ = _timed(lambda: bare(B), dev)
    with Peak(dev) as pk: tm, _ = _timed(lambda: run(B), dev)
    hvp = None
    if a["metric"] == "hutchinson_diag":  # the activations of a second-order pass: a bare Hessian-vector product's
        _bare_hvp(model, refs, B0, a["bs"], a["K"])
        with Peak(dev) as pk_hvp: _bare_hvp(model, refs, B, a["bs"], a["K"])
        hvp = pk_hvp.extra
    # time: interleaved pairs (bare, metric), so that other load on the machine hits both alike; medians
    pairs = [(tb, tm)] + [(_timed(lambda: bare(B), dev)[0], _timed(lambda: run(B), dev)[0]) for _ in range(a["repeat"] - 1)]
    med = lambda v: sorted(v)[len(v) // 2]
    b, t = med([p[0] for p in pairs]), med([p[1] for p in pairs])
    marginal = (t - m0) / (b - b0) if b - b0 > 0.2 * b else None
    _emit({"metric": a["metric"], "seconds": t, "bare_fwd_bwd_s": b, "ratio": med([p[1] / p[0] for p in pairs]), "repeats": len(pairs),
           "fixed_s": m0 - b0, "marginal_ratio": marginal,
           "tokens": int(B.numel()), "weight_bytes": _weight_bytes(model), "selected_weights": sum(r.numel for r in refs),
           "ru_maxrss": _ru_maxrss(), "rss_loaded": rss_loaded, "metric_extra_bytes": pk.extra,
           "bare_extra_bytes": pk_bare.extra, "bare_hvp_extra_bytes": hvp, "score_bytes": 4 * sum(r.numel for r in refs),
           "grad_bytes": sum(r.numel * r.param.element_size() for r in refs), "fp32_weight_bytes": 4 * sum(p.numel() for p in model.parameters()),
           "logits_bytes": a["bs"] * B.shape[1] * model.get_output_embeddings().weight.shape[0] * 4, "samples": a["K"] if a["metric"] == "hutchinson_diag" else a["S"] if a["metric"] == "hessian_diag" else None,
           "device": str(dev), "loss_chunk": lc})


def w_topk(a):
    "Exact top-k over n_tensors x numel fp32 scores."
    import torch
    from esa_nb.topk import select_topk
    g = torch.Generator().manual_seed(0)
    S = {f"model.layers.{i}.w": torch.rand(a["numel"], generator=g) for i in range(a["n_tensors"])}
    out = {"n_scores": a["numel"] * a["n_tensors"], "rss_scores": _rss_now()}
    for mode, k in (("global", 100), ("global", 10_000), ("per_layer", 100)):
        with Peak() as pk: t, r = _timed(lambda: select_topk(S, k, mode))
        out[f"{mode}_k{k}_s"] = t; out[f"{mode}_k{k}_extra_bytes"] = pk.extra
    out["ru_maxrss"] = _ru_maxrss()
    _emit(out)


def w_scale(a):
    "Forward+backward and grad_x_weight on a random Llama of the given size."
    import torch
    from esa_nb.models import tiny_llama
    from esa_nb.weights import select_weights
    from esa_nb.metrics import compute_scores
    h, L = a["hidden"], a["layers"]
    heads = max(1, h // 64); kv = max(1, heads // 4)
    dev = torch.device(a["device"] if a["device"] != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    model = tiny_llama(hidden=h, layers=L, heads=heads, kv_heads=kv, intermediate=3 * h, ctx=max(256, a["seq"])).to(dev)
    B = torch.randint(0, 257, (a["blocks"], a["seq"]), generator=torch.Generator().manual_seed(0))
    refs = select_weights(model)
    n = sum(p.numel() for p in model.parameters())
    _bare_fwd_bwd(model, refs, B, a["blocks"])  # warm-up
    ts = []
    for _ in range(2):
        with Peak(dev) as pk_b: t, _ = _timed(lambda: _bare_fwd_bwd(model, refs, B, a["blocks"]), dev)
        ts.append(t)
    gxw = lambda: compute_scores(model, refs, B, "grad_x_weight", batch_size=a["blocks"], progress=False)
    gxw()  # warm-up
    tgs = []
    for _ in range(2):
        with Peak(dev) as pk_g: t, _ = _timed(gxw, dev)
        tgs.append(t)
    tg = min(tgs)
    flops = 6 * n * B.numel()  # forward + backward, ignoring attention's T^2 term (small at this T)
    _emit({"hidden": h, "layers": L, "n_params": n, "weight_bytes": _weight_bytes(model), "tokens": int(B.numel()),
           "flops": flops, "fwd_bwd_s": min(ts), "gxw_s": tg, "fwd_bwd_extra_bytes": pk_b.extra, "gxw_extra_bytes": pk_g.extra,
           "ru_maxrss": _ru_maxrss()})


def w_attribute(a):
    "Evaluations the core search uses: synthetic additive effects (cores of 1-5 equal items at given ranks, 1e-4 for every other"
    " item) and a tiny model with a planted super weight."
    import torch
    from esa_nb.causal import SetEffects, core_search, plant_super_weight
    rows = []
    for k in a["ks"]:
        for ranks in a["cores"]:
            if max(ranks) >= k: continue
            eff = {r: 2.0 for r in ranks}  # equal effects: every planted item is needed to reach 90%
            f = SetEffects(lambda s, eff=eff: {"delta_nll": sum(eff.get(i, 1e-4) for i in s)})
            r = core_search(f, list(range(k)), 0.9)
            rows.append({"kind": "synthetic", "k": k, "core_ranks": list(ranks), "found": r["core"] == sorted(ranks),
                         "evaluations": r["evaluations"]})
    from esa_nb.study import Study
    from esa_nb.models import save_tiny
    d = Path(tempfile.mkdtemp()); save_tiny(d / "m", "llama", hidden=64, intermediate=128)
    for k in a["ks"]:
        s = Study(str(d / "m"), device="cpu", seq_len=64, max_samples=8, eval_samples=16, no_progress=True, seeds=[1],
                  topk=k, mode="global", perturb="zero")
        name, flat = plant_super_weight(s.model, s.data0.calib)
        prof = s.profile("grad_x_weight")
        t, att = _timed(lambda: s.attribute(prof, top=min(20, k), stop_words=0, hold=False, alphas=[]))
        core = att["per_seed"]["1"]
        rows.append({"kind": "planted model", "k": k, "core_ranks": [prof.topk_set(1, k).key_set() and
                     list(zip(prof.topk_set(1, k).names, prof.topk_set(1, k).flat.tolist())).index((name, flat)) + 1],
                     "found": [(c["tensor"], c["flat"]) for c in core["core"]] == [(name, flat)],
                     "evaluations": core["evaluations"], "attribution_s": t, "total_evaluations": att["evaluations"]})
    _emit({"rows": rows})


WORKERS = {"load": w_load, "metric": w_metric, "topk": w_topk, "scale": w_scale, "attribute": w_attribute}


# ---------------------------------------------------------------------------------------------------------------------
# orchestrator

def run_worker(name, args, env=None, timeout=900):
    "Run a worker in a fresh Python process; return its result dict (and the process wall time)."
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore", **(env or {})}
    t = time.perf_counter()
    p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", name, json.dumps(args)],
                       capture_output=True, text=True, env=e, timeout=timeout, cwd=ROOT)
    wall = time.perf_counter() - t
    lines = [l for l in p.stdout.splitlines() if l.startswith(TAG)]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"worker {name} {args} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    out = json.loads(lines[-1][len(TAG):]); out["process_wall_s"] = wall
    return out


def machine_info() -> dict:
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"): cpu = line.split(":", 1)[1].strip(); break
    except OSError: pass
    mem = None
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"): mem = int(line.split()[1]) * 1024; break
    except OSError: pass
    import transformers
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu, "logical_cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "memory_bytes": mem, "torch": torch.__version__,
            "transformers": transformers.__version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None}
    return info


def _gb(b): return f"{b / 2**30:.2f} GiB" if b is not None else "-"


def table(title, headers, rows):
    "Print a fixed-width table."
    cells = [[str(c) for c in r] for r in rows]
    w = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  " + "  ".join(h.ljust(w[i]) for i, h in enumerate(headers)))
    print("  " + "  ".join("-" * w[i] for i in range(len(headers))))
    for r in cells: print("  " + "  ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(r)))


def f(x, d=2): return "-" if x is None else f"{x:.{d}f}"


def sec_load(cfg, R):
    tmp = Path(tempfile.mkdtemp(prefix="esa_bench_cache."))
    try:
        env = {"ESA_NB_CACHE": str(tmp)}  # empty: the first load dequantizes the GGUF; the second finds it converted
        first = run_worker("load", {"device": cfg.device}, env) if not cfg.quick else None
        cached = run_worker("load", {"device": cfg.device, "eval": True, "seq": cfg.eval_seq, "blocks": cfg.eval_blocks, "bs": 4},
                            env if first else None)
    finally: shutil.rmtree(tmp, ignore_errors=True)
    # the condition's extra cost is per weight (checksums, saved bits), the evaluation's per token: at the runbooks'
    # evaluation size (64 blocks of 256 tokens) the ratio is
    fixed = cached["condition_s"] - cached["eval_s"]
    t64 = cached["eval_s"] / cached["eval_tokens"] * 64 * 256
    cached["condition_ratio_64x256"] = (t64 + fixed) / t64
    R["load"] = {"first": first, "cached": cached}
    rows = []
    if first: rows.append(["first load (GGUF dequantized, empty cache)", f(first["load_s"]), f(first["process_wall_s"]), _gb(first["ru_maxrss"])])
    else: rows.append(["first load (skipped with --quick)", "-", "-", "-"])
    rows.append(["cached load", f(cached["load_s"]), f(cached["process_wall_s"]), _gb(cached["rss_after_load"])])
    table(f"Load: embedded smollm2-135m ({cached['n_params'] / 1e6:.1f}M params, {cached['dtype']}, attention {cached['attn']}, "
          f"weights {_gb(cached['weight_bytes'])})", ["", "load_model s", "process s", "memory"], rows)
    table("Evaluation and Phase 3 (smollm2-135m)", ["", "value"], [
        ["evaluation tokens", cached["eval_tokens"]],
        ["evaluation s", f(cached["eval_s"])],
        ["throughput tokens/s", f(cached["tokens_per_s"], 0)],
        [f"one condition s (zero {cached['n_perturbed']} weights, evaluate, restore, verify, bootstrap)", f(cached["condition_s"])],
        ["condition / plain evaluation (target ~1.0)", f(cached["condition_ratio"])],
        ["perturb + restore + checksum of the touched rows alone s (the default)", f(cached["perturb_restore_verify_s"], 3)],
        ["the same with whole-tensor checksums (--verify-restore tensor) s", f(cached["perturb_restore_verify_tensor_s"], 3)],
        ["projected condition / evaluation at 64 x 256 evaluation tokens", f(cached["condition_ratio_64x256"])]])


def sec_metrics(cfg, R):
    from esa_nb.metrics import METRICS
    res = {}
    for m in METRICS:
        rep = 1 if cfg.quick or m == "hutchinson_diag" else 2 if m == "hessian_diag" else 3
        res[m] = run_worker("metric", {"metric": m, "model": cfg.metrics_model or "smollm2-135m", "device": cfg.device, "seq": cfg.m_seq, "blocks": cfg.m_blocks,
                                       "bs": cfg.m_blocks, "K": cfg.K, "S": cfg.S, "repeat": rep})
    R["metrics"] = res
    any_ = next(iter(res.values()))
    wb = any_["weight_bytes"]
    target = {"grad_x_weight": "1.0-1.2", "grad_squared": "1.0-1.2", "hessian_diag": f"~1+{cfg.S} bwd", "act_mag": "~0.5 (1 fwd)",
              "hutchinson_diag": f"~{cfg.K} x HVP", "magnitude": "~0"}
    rows = []
    for m, r in res.items():
        mr = r["marginal_ratio"]
        per = f((mr if mr is not None else r["ratio"]) / r["samples"]) if r["samples"] else "-"
        rows.append([m, f(r["seconds"]), f(r["bare_fwd_bwd_s"]), f(r["ratio"]), f(r["fixed_s"]), f(mr), per, target[m], _gb(r["ru_maxrss"]),
                     f(r["ru_maxrss"] / wb), f(r["metric_extra_bytes"] / wb), f(r["bare_extra_bytes"] / wb)])
    table(f"Metrics on {Path(cfg.metrics_model).name if cfg.metrics_model else 'smollm2-135m'}: {any_['tokens']} tokens ({cfg.m_blocks} blocks x {cfg.m_seq}), {any_['selected_weights'] / 1e6:.1f}M "
          f"selected weights, weights {_gb(wb)}; hutchinson K={cfg.K}, hessian S={cfg.S}; each in its own process",
          ["metric", "s", "bare fwd+bwd s", "ratio", "fixed s", "marginal ratio", "per sample", "target", "peak RSS", "peak/weights",
           "metric extra/weights", "fwd+bwd extra/weights"], rows)
    print("  ratio = median over interleaved (bare, metric) pairs of metric / bare forward+backward on the same tokens (the same\n"
          "  selected weights requiring grad); fixed s = the metric's cost beyond fwd+bwd on a 16-token input (fp32 buffers, final\n"
          "  pass, finiteness check: per weight, not per token); marginal ratio = (metric - its 16-token time) / (fwd+bwd - its\n"
          "  16-token time): the ratio for long calibration runs, where per-token work dominates. per sample = marginal ratio / K or S.\n"
          "  peak RSS = ru_maxrss of the metric's process (model load included); extra = peak during the step - memory before it\n"
          "  (first full-size run, after malloc_trim).")
    _memory_breakdown(cfg, res)


def _memory_breakdown(cfg, res):
    "Where a gradient metric's memory goes, against the target: weights + its extra <= 2.5 x fp32 weights + one batch's activations."
    from esa_nb.metrics import METRIC_SPECS
    rows = []
    # one batch's activations are the model's and the batch's, not the metric's: every metric's process measures a bare
    # forward+backward of the same batch, and a single RSS measure is noisy (sampled, after the allocator's history), so the
    # median over all processes is taken
    bare = sorted(r["bare_extra_bytes"] for r in res.values()); bare_med = bare[len(bare) // 2]
    for m, r in res.items():
        if not METRIC_SPECS[m].needs_grad: continue
        W, S, G, L = r["weight_bytes"], r["score_bytes"], r["grad_bytes"], r["logits_bytes"]
        A = max(0, bare_med - G)  # a bare forward+backward's peak beyond its gradients: one batch's activations
        if r.get("bare_hvp_extra_bytes") is not None:  # second order: a bare HVP's peak beyond its g, z and Hz
            A = max(0, r["bare_hvp_extra_bytes"] - 3 * G)
        used, bound = W + r["metric_extra_bytes"], 2.5 * r["fp32_weight_bytes"] + A
        rows.append([m, _gb(W), _gb(S), _gb(G), _gb(A), _gb(L), _gb(r["metric_extra_bytes"]), _gb(used), _gb(bound), f(used / bound)])
    table(f"Peak memory of the gradient metrics ({cfg.m_blocks} blocks x {cfg.m_seq} tokens per batch; target: weights + extra <= "
          "2.5 x fp32 weights + activations of one batch)",
          ["metric", "weights", "score buffers", "gradients", "activations", "of which logits", "metric extra", "weights + extra",
           "bound", "ratio (<= 1)"], rows)
    print(f"  the metrics run with the runner's default loss chunking (loss_chunk={next(iter(res.values())).get('loss_chunk')}); the bare "
          "forward+backward that measures one batch's activations keeps full logits.")
    print(f"  bare forward+backward peaks over the {len(bare)} processes: {', '.join(f'{b / 2**30:.2f}' for b in bare)} GiB (the median is used)")
    print("  score buffers = 4 bytes per selected weight; gradients = the selected weights' .grad in their dtype; activations = the\n"
          "  peak of a bare forward+backward of one batch beyond its gradients (measured); for hutchinson_diag, of K bare Hessian-vector\n"
          "  products on one graph (eager attention, full logits: g = grad(L, create_graph=True), then grad(g, z_k), the graph kept for\n"
          "  all but the last, as any K-probe estimate on one forward pass must) beyond their g, z and Hz, because a\n"
          "  second-order pass keeps the first backward's intermediates as well; logits = batch x tokens x vocabulary x 4 bytes\n"
          "  (computed, part of the activations); metric extra = the metric's measured peak beyond the loaded model.")


def sec_topk(cfg, R):
    r = run_worker("topk", {"n_tensors": cfg.topk_tensors, "numel": cfg.topk_numel})
    R["topk"] = r
    rows = [[k.replace("_s", ""), f(v, 3), _gb(r[k.replace("_s", "_extra_bytes")])] for k, v in r.items()
            if k.endswith("_s") and "wall" not in k]
    table(f"Top-k selection over {r['n_scores']:.1e} fp32 scores ({cfg.topk_tensors} tensors of {cfg.topk_numel:.1e}; scores "
          f"{_gb(r['n_scores'] * 4)})", ["selection", "s", "extra memory"], rows)


PASS_PHASES = ("baseline", "profiling", "perturbation")  # the phases made of forward/backward passes (the control draws are timed apart)

def _import_floor(model:str, repeats:int)->float:
    "Median wall time of a fresh process that starts Python and imports what any transformers workflow on `model` must import."
    import statistics
    p, mt = Path(model), None
    if p.suffix == ".gguf":  # the cached conversion (made by the runs) holds the config
        from esa_nb.models import convert_gguf
        got = convert_gguf(p, build=False); p = got[0] if got else None
    if p is not None and (p / "config.json").is_file(): mt = json.loads((p / "config.json").read_text()).get("model_type")
    code = "import torch, transformers; from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer"
    if mt: code += f"; import importlib; importlib.import_module('transformers.models.{mt}.modeling_{mt}')"  # the model class
    code += "; import os; os._exit(0)"  # no interpreter teardown: esa-runner leaves with os._exit as well
    ts = []
    for _ in range(repeats):
        t = time.perf_counter(); subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=ROOT)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)

def sec_plain(cfg, R):
    "esa_nb against the plain script a researcher would write (bench/plain_workflow.py), interleaved runs, medians."
    import statistics
    from esa_nb.models import embedded_gguf_path
    exe = Path(sys.executable).parent / "esa-runner"  # the installed command, as a user runs it (else the module)
    runner = [str(exe)] if exe.exists() else [sys.executable, "-c", "from esa_nb.host import runner_cli; runner_cli()"]
    tmp = Path(tempfile.mkdtemp(prefix="esa_bench_plain."))
    T, nc, ne = cfg.plain_seq, cfg.plain_blocks, cfg.plain_blocks
    dev = cfg.device if cfg.device != "auto" else "cpu"  # the targets are set on the CPU: CUDA only when asked for
    model = cfg.plain_model or str(embedded_gguf_path())
    esa = runner + ["--model", model, "--metric", "grad_x_weight", "--mode", "global", "--topk", "100", "--max-samples", str(nc), "--eval-samples", str(ne),
           "--seq-len", str(T), "--perturb", "zero", "--controls", "random_k,bottom_k", "--seeds", "0,1", "--no-progress", "--device", dev]
    plain = [sys.executable, str(HERE / "plain_workflow.py"), model, str(T), str(nc), str(ne), dev]
    runs = {"esa_nb": [], "plain": []}
    try:
        for i in range(cfg.plain_repeats):  # interleaved, so that machine load affects both alike
            # each command runs under a fresh worker process, whose RUSAGE_CHILDREN peak is that command's alone
            # a parent directory per run: no run may reuse another's saved scores (siblings are searched by design)
            for name, cmd in (("esa_nb", esa + ["--out-dir", str(tmp / f"run{i}" / "out")]), ("plain", plain)):
                r = run_worker("measure", {"cmd": cmd})
                if name == "esa_nb":
                    man = json.loads((tmp / f"run{i}" / "out" / "experiment_manifest.json").read_text()); r["phases"] = man["phase_seconds"]
                    r["peak_cuda"] = _find(man, "peak_cuda_allocated_bytes")
                    assert not man.get("score_reuse"), "a benchmark run reused saved scores"
                runs[name].append(r)
    finally: shutil.rmtree(tmp, ignore_errors=True)
    med = {n: {k: statistics.median(x.get(k) or 0 for x in v) for k in ("wall_s", "peak_rss", "minor_faults")} for n, v in runs.items()}
    spread = {n: {k: (min(x[k] for x in v), max(x[k] for x in v)) for k in ("wall_s", "peak_rss")} for n, v in runs.items()}
    R["plain"] = {"runs": runs, "median": med, "spread": spread}
    rows = [[n, f(med[n]["wall_s"], 1), f"{f(spread[n]['wall_s'][0], 1)}-{f(spread[n]['wall_s'][1], 1)}", _gb(med[n]["peak_rss"]),
             f"{_gb(spread[n]['peak_rss'][0])}-{_gb(spread[n]['peak_rss'][1])}", f"{med[n]['minor_faults'] / 1e6:.2f}M"] for n in runs]
    rows.append(["esa_nb / plain", f(med["esa_nb"]["wall_s"] / med["plain"]["wall_s"]), "", f(med["esa_nb"]["peak_rss"] / med["plain"]["peak_rss"]), "",
                 f(med["esa_nb"]["minor_faults"] / max(med["plain"]["minor_faults"], 1))])
    if dev != "cpu":  # device memory: the peak allocated by each workflow (the plain script prints its own)
        cu = {n: statistics.median(x.get("peak_cuda") or 0 for x in v) for n, v in runs.items()}
        med["esa_nb"]["peak_cuda"], med["plain"]["peak_cuda"] = cu["esa_nb"], cu["plain"]
        print(f"  peak {dev} memory allocated: esa_nb {_gb(cu['esa_nb'])}, plain {_gb(cu['plain'])}, ratio {f(cu['esa_nb'] / max(cu['plain'], 1))}")
    what = "embedded SmolLM2-135M" if not cfg.plain_model else Path(cfg.plain_model).name
    table(f"esa_nb against a plain PyTorch workflow on {dev}: {what}, {nc} calibration + {ne} evaluation blocks of {T}, "
          f"grad_x_weight global top-100, zero + random_k + bottom_k, seeds 0,1; median of {cfg.plain_repeats} interleaved runs "
          "(targets: <= 0.6 wall, <= 0.5 peak memory)", ["workflow", "wall s", "range", "peak RSS", "range", "minor page faults"], rows)
    ph = statistics.median  # where esa_nb's time goes (median over runs)
    keys = sorted({k for x in runs["esa_nb"] for k in x["phases"]})
    table("esa_nb phases (median seconds)", ["phase", "s"], [[k, f(ph(x["phases"].get(k, 0.0) for x in runs["esa_nb"]), 1)] for k in keys])
    # the forward/backward phases both workflows must run, against everything else (start-up, loading, top-k, statistics, writing)
    fb = [sum(x["phases"].get(k, 0.0) for k in PASS_PHASES) for x in runs["esa_nb"]]
    other = [x["wall_s"] - b for x, b in zip(runs["esa_nb"], fb)]
    pw = med["plain"]["wall_s"]
    imp = _import_floor(model, cfg.plain_repeats)  # what no transformers workflow avoids: Python, torch and transformers' imports
    ew = med["esa_nb"]["wall_s"]
    R["plain"]["passes"] = {"fwd_bwd_s": ph(fb), "other_s": ph(other), "other_share": ph(o / x["wall_s"] for o, x in zip(other, runs["esa_nb"])),
                            "fwd_bwd_over_plain": ph(fb) / pw, "import_floor_s": imp}
    P = R["plain"]["passes"]
    table("esa_nb: the forward/backward passes against everything else (medians; target: everything else <= 10% of the run)",
          ["part", "s", "share of esa_nb's run", "over the plain workflow's wall time"],
          [["baseline + profiling + perturbation (forward/backward passes)", f(P["fwd_bwd_s"], 1), f(1 - P["other_share"]), f(P["fwd_bwd_over_plain"])],
           ["everything else (process start, load, top-k, control draws, statistics, writing)", f(P["other_s"], 1), f(P["other_share"]), f(P["other_s"] / pw)],
           ["  of which starting Python and importing torch and transformers", f(imp, 1), f(imp / ew), f(imp / pw)],
           ["  of which the rest: reading weights and text, top-k, statistics, writing", f(P["other_s"] - imp, 1),
            f((P["other_s"] - imp) / ew), f((P["other_s"] - imp) / pw)]])
    print("  the passes alone set the floor of the wall-time ratio: esa_nb / plain >= (forward/backward s) / (plain s).\n"
          f"  imports: the median of {cfg.plain_repeats} fresh processes that only import torch, transformers' Auto classes and the "
          "model's modelling module,\n  then leave with os._exit as esa-runner does; the plain workflow pays them too (and its teardown).")


def w_measure(a):
    "Run a command as a child and report its wall time and its own peak RSS (this worker is a fresh process)."
    t = time.perf_counter()
    p = subprocess.run(a["cmd"], capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0: raise RuntimeError(f"{a['cmd'][0]} failed:\n{p.stderr[-3000:]}")
    lines = p.stdout.strip().splitlines()
    try: said = json.loads(lines[-1]) if lines else {}
    except ValueError: said = {}
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    _emit({"wall_s": time.perf_counter() - t, "peak_rss": ru.ru_maxrss * 1024, "minor_faults": ru.ru_minflt,
           "peak_cuda": said.get("peak_cuda") if isinstance(said, dict) else None})


WORKERS["measure"] = w_measure


def sec_attribute(cfg, R):
    r = run_worker("attribute", {"ks": cfg.attr_ks, "cores": [[0], [0, 1, 2, 4, 7], [2, 9, 17], [0, 1, 2, 3, 4], [10, 30, 50, 70, 90]]})
    R["attribute"] = r
    table("Causal core search: evaluations used against k (target: <= 25 for k = 100 and a core of <= 5 weights; "
          "k single ablations would use k)", ["model", "k", "core at ranks", "core found", "evaluations", "evaluations / k"],
          [[x["kind"], x["k"], ",".join(str(i + (x["kind"] == "synthetic")) for i in x["core_ranks"]), x["found"], x["evaluations"],
            f(x["evaluations"] / x["k"])] for x in r["rows"]])


def sec_scaling(cfg, R):
    rows, res = [], []
    for h, L in cfg.scale_configs:
        r = run_worker("scale", {"hidden": h, "layers": L, "seq": cfg.s_seq, "blocks": cfg.s_blocks, "device": cfg.device})
        res.append(r)
    R["scaling"] = res
    base = res[0]
    for r in res:
        rows.append([f"{r['hidden']}x{r['layers']}", f"{r['n_params'] / 1e6:.2f}M", f"{r['flops'] / 1e9:.1f}",
                     f(r["fwd_bwd_s"], 3), f(r["flops"] / r["fwd_bwd_s"] / 1e9, 1), f(r["gxw_s"], 3), f(r["gxw_s"] / r["fwd_bwd_s"]),
                     f((r["gxw_s"] / r["flops"]) / (base["gxw_s"] / base["flops"])),
                     _gb(r["weight_bytes"]), f(r["fwd_bwd_extra_bytes"] / r["weight_bytes"]), f(r["gxw_extra_bytes"] / r["weight_bytes"])])
    table(f"Scaling: random Llama, hidden x depth (MLP 3x hidden), {cfg.s_blocks} blocks x {cfg.s_seq} tokens; FLOPs = 6 x params x tokens",
          ["config", "params", "GFLOP", "fwd+bwd s", "GFLOP/s", "gxw s", "gxw/fwd+bwd", "gxw s/FLOP vs smallest",
           "weights", "fwd+bwd extra/weights", "gxw extra/weights"], rows)


def sec_torchrun(cfg, R):
    from esa_nb.models import save_tiny
    from esa_nb.distributed import torchrun_cmd
    tmp = Path(tempfile.mkdtemp(prefix="esa_bench_tr."))
    try:
        model = save_tiny(tmp / "model", "llama", hidden=cfg.tr_hidden, layers=cfg.tr_layers, heads=4, kv_heads=2,
                          intermediate=3 * cfg.tr_hidden, ctx=512)
        exe = Path(sys.executable).parent / "esa-runner"
        args = ["--model", model, "--device", "cpu", "--seq-len", str(cfg.tr_seq), "--max-samples", str(cfg.tr_blocks),
                "--eval-samples", str(cfg.tr_blocks), "--metric", "grad_x_weight", "--mode", "per_layer", "--topk", "10",
                "--seeds", "1", "--perturb", "zero", "--controls", "random_k,bottom_k", "--n-boot", "200", "--no-progress",
                "--batch-size", "4", "--superweight-blocks", "2"]
        ncpu = os.cpu_count() or 1
        runs = [("single process", None, ncpu), ("torchrun 1 process", 1, ncpu), (f"torchrun 2 processes", 2, max(1, ncpu // 2))]
        res = {}
        for name, nproc, threads in runs:
            out = tmp / f"run{len(res)}" / "out"  # separate parents: no run may reuse another's saved scores
            cmd = ([str(exe)] if nproc is None else torchrun_cmd(nproc, exe)) + [str(x) for x in args] + ["--out-dir", str(out)]
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore",
                   "TOKENIZERS_PARALLELISM": "false"}
            t = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
            wall = time.perf_counter() - t
            if p.returncode != 0: raise RuntimeError(f"{name} failed:\n{p.stderr[-3000:]}")
            man = json.loads((out / "experiment_manifest.json").read_text())
            ph = man["phase_seconds"]
            res[name] = {"threads_per_process": threads, "wall_s": wall, "baseline_s": ph.get("baseline"),
                         "profiling_s": ph.get("profiling"), "perturbation_s": ph.get("perturbation"),
                         "world_size": man.get("world_size"), "backend": man.get("backend"),
                         "baseline_nll": json.loads((out / "baseline_metrics.json").read_text())["nll"]}
    finally: shutil.rmtree(tmp, ignore_errors=True)
    R["torchrun"] = res
    ref = res["single process"]
    rows = [[n, r["world_size"], r["threads_per_process"], f(r["baseline_s"]), f(r["profiling_s"]), f(r["perturbation_s"]),
             f(r["wall_s"]), f(ref["profiling_s"] / r["profiling_s"]), f"{r['baseline_nll']:.6f}"] for n, r in res.items()]
    table(f"esa-runner, torchrun vs one process: random Llama {cfg.tr_hidden}x{cfg.tr_layers}, grad_x_weight, {cfg.tr_blocks} "
          f"calibration + {cfg.tr_blocks} evaluation blocks of {cfg.tr_seq}, zero + 2 controls",
          ["run", "ranks", "threads/rank", "baseline s", "profiling s", "perturbation s", "process s", "profiling speed-up", "baseline nll"], rows)


def projection(R):
    "Llama-3.1-8B on one H100 for the runbooks' standard analysis, from the measured ratios (arithmetic printed)."
    m = R.get("metrics", {})
    g = m.get("grad_x_weight", {})
    r_gxw = max(1.0, g.get("marginal_ratio") or g.get("ratio") or 1.1)  # a metric cannot cost less than the fwd+bwd it contains
    P, P_sel = 8.03e9, 6.98e9  # parameters; the default selection (the 224 block projections)
    FLOPS, HBM = 400e12, 2.0e12  # effective bf16 FLOP/s (~40% MFU) and effective memory bandwidth of one H100
    # per condition, --verify-restore rows (the default): checksums before and after of the touched rows only, at most k = 100 rows of
    # each of the 224 projections (32 layers; a row is in_features long: q, k, v, o, gate, up 4096, down 14336), ~100 B of traffic per weight
    ck = 2 * 32 * 100 * (6 * 4096 + 14336) * 100 / HBM
    rows = []
    for T in (256, 2048):
        prof = 3 * r_gxw * 6 * P * 200 * T / FLOPS
        base = 2 * P * 64 * T / FLOPS
        cond = 2 * P * 64 * T / FLOPS + ck
        pert = 3 * 3 * cond
        rows.append([T, f"3 x {r_gxw:.2f} x 6P x {200 * T} / F = {prof:.0f}", f"{base:.1f}", f"9 x ({cond - ck:.2f} + {ck:.3f}) = {pert:.0f}",
                     f"{prof + base + pert:.0f}"])
    table(f"Projection: Llama-3.1-8B (P = 8.03e9) on one H100, F = 400 TFLOP/s effective bf16: grad_x_weight per_layer k=100, "
          f"200 calibration + 64 evaluation blocks, 3 seeds, super + random_k + bottom_k (gxw/fwd+bwd = max(1, measured marginal ratio) = {r_gxw:.2f})",
          ["seq len", "profiling s", "baseline s", "perturbation s (eval + row checksums)", "compute total s"], rows)
    print("  the super-weight scan is recorded during the first seed's profiling passes (no pass of its own for gradient metrics)")
    w, buf = 2 * P, 4 * P_sel
    print(f"  memory: bf16 weights {w / 1e9:.1f} GB + one fp32 score buffer per selected weight {buf / 1e9:.1f} GB = {(w + buf) / 1e9:.1f} GB"
          " before activations; plus model load (16 GB from disk) and saving 28 GB of scores per seed")


def main(argv=None):
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, no first load (about 3 minutes on 2 cores)")
    p.add_argument("--only", default=None, help="comma-separated sections: load, metrics, topk, scaling, torchrun, attribute, plain")
    p.add_argument("--device", default="auto", help="device of the model measurements (auto: CUDA if present)")
    p.add_argument("--plain-model", default=None, help="plain: the model both workflows load (default: the embedded GGUF)")
    p.add_argument("--metrics-model", default=None, help="metrics: the model measured (default: the embedded GGUF)")
    p.add_argument("--plain-size", default=None, help="plain: SEQ_LEN,BLOCKS for calibration and evaluation (default 256,8)")
    p.add_argument("--plain-repeats", type=int, default=None, help="plain: interleaved runs of each workflow (default 3)")
    p.add_argument("--out", default=None, help="JSON file to write (default bench/results/bench-<time>.json)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("worker_args", nargs="?", default=None, help=argparse.SUPPRESS)
    cfg = p.parse_args(argv)
    if cfg.worker:
        WORKERS[cfg.worker](json.loads(cfg.worker_args)); return
    q = cfg.quick
    cfg.eval_seq, cfg.eval_blocks = (64, 4) if q else (128, 8)
    cfg.m_seq, cfg.m_blocks, cfg.K, cfg.S = (32, 1, 1, 2) if q else (64, 4, 2, 4)
    cfg.topk_tensors, cfg.topk_numel = (25, 400_000) if q else (25, 4_000_000)
    cfg.scale_configs = [(64, 2), (128, 4), (256, 8)] if q else [(64, 2), (128, 4), (256, 8), (512, 12), (1024, 16)]
    cfg.s_seq, cfg.s_blocks = (64, 2) if q else (128, 2)
    cfg.tr_hidden, cfg.tr_layers, cfg.tr_seq, cfg.tr_blocks = (128, 2, 64, 8) if q else (256, 4, 128, 16)
    cfg.attr_ks = [25, 100] if q else [25, 50, 100, 200]
    cfg.plain_seq, cfg.plain_blocks, reps = (128, 4, 1) if q else (256, 8, 3)
    cfg.plain_repeats = cfg.plain_repeats or reps
    if cfg.plain_size: cfg.plain_seq, cfg.plain_blocks = map(int, cfg.plain_size.split(","))
    sections = {"load": sec_load, "metrics": sec_metrics, "topk": sec_topk, "scaling": sec_scaling, "torchrun": sec_torchrun,
                "attribute": sec_attribute, "plain": sec_plain}
    chosen = [s.strip() for s in cfg.only.split(",")] if cfg.only else list(sections)
    bad = [s for s in chosen if s not in sections]
    if bad: p.error(f"unknown section(s) {bad}; choose from {', '.join(sections)}")
    info = machine_info()
    R = {"machine": info, "quick": q, "sections": chosen, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    print("esa_nb benchmarks" + (" (--quick)" if q else ""))
    print(f"  {info['cpu']}, {info['logical_cpus']} logical CPUs, {info['torch_threads']} torch threads, {_gb(info['memory_bytes'])} RAM, "
          f"GPU: {info['cuda'] or 'none'}; torch {info['torch']}, transformers {info['transformers']}, {info['platform']}")
    if info["loadavg_start"]: print(f"  load average at start: {', '.join(f'{x:.2f}' for x in info['loadavg_start'])} "
                                    "(other work on the machine makes timings noisy)")
    t0 = time.perf_counter()
    for s in chosen:
        ts = time.perf_counter()
        sections[s](cfg, R)
        R.setdefault("section_seconds", {})[s] = time.perf_counter() - ts
    if "metrics" in R or "load" in R: projection(R)
    R["total_seconds"] = time.perf_counter() - t0
    R["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    out = Path(cfg.out) if cfg.out else RESULTS / f"bench-{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if q else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(R, indent=2, default=str) + "\n")
    print(f"\ntotal {R['total_seconds']:.0f} s; load average at end {', '.join(f'{x:.2f}' for x in R['loadavg_end'] or [])}; "
          f"results in {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
