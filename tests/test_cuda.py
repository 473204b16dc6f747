"""The CUDA paths give the CPU's answers: statistics and histograms (bincount, scatter_reduce, int32 keys), top-k and
bottom-k, perturbation and restore, the metrics, the fused chunked loss, and one whole `esa-runner` run.

Skipped without a GPU. `ESA_TEST_DEVICE=cpu` runs the same comparisons CPU against CPU, which checks the tests themselves
on a machine without one.
"""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

DEV = os.environ.get("ESA_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEV == "cuda" and not torch.cuda.is_available(), reason="no CUDA device")


def _scores(seed=0):
    "Heavy-tailed scores with ties, exact zeros and one huge outlier, in tensors of unequal size."
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, shape in enumerate([(64, 48), (48, 64), (128, 32), (257,), (31, 7)]):
        x = torch.randn(shape, generator=g).exp_().mul_(torch.rand(shape, generator=g) ** 4)
        x.view(-1)[:: 11] = 0.0
        x.view(-1)[1:: 13] = 0.5  # ties
        out[f"model.layers.{i}.mlp.down_proj.weight"] = x
    out["model.layers.2.mlp.down_proj.weight"].view(-1)[5] = 1e6
    return out


def _on(d, device=DEV): return {k: v.to(device) for k, v in d.items()}


def _same_stats(a, b, path=""):
    "Equal, except the Gini's midpoint, which may differ within the sum of both certified bounds (float atomics)."
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            if k == "gini" and "gini_max_error" in a:
                assert abs(a[k] - b[k]) <= a["gini_max_error"] + b["gini_max_error"] + 1e-12, (path, a[k], b[k])
            elif k != "gini_max_error": _same_stats(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)): _same_stats(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and not (math.isnan(a) and math.isnan(b)):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), (path, a, b)
    else: assert a == b or (a != a and b != b), (path, a, b)


def test_score_stats_and_histograms():
    from esa_nb.stats import layer_kind_summary, log_histogram, score_stats, value_histogram
    s = _scores()
    layer_of = {n: int(n.split(".")[2]) for n in s}
    kind_of = {n: "down_proj" for n in s}
    _same_stats(score_stats(_on(s), layer_of, kind_of), score_stats(s, layer_of, kind_of))
    _same_stats(log_histogram(_on(s)), log_histogram(s))
    w = {n: v - 0.3 for n, v in s.items()}  # signed values
    for kw in ({}, {"spacing": "linear"}, {"lo": -1.0, "hi": 2.0}):
        _same_stats(value_histogram(_on(w), **kw), value_histogram(w, **kw))
    _same_stats(layer_kind_summary(_on(s), layer_of, kind_of), layer_kind_summary(s, layer_of, kind_of))


def test_topk_and_controls():
    from esa_nb.perturb import PerturbSettings, bottom_k
    from esa_nb.topk import select_seeded, select_topk
    s = _scores(1)
    for mode, k in (("global", 100), ("per_layer", 7)):
        for largest in (True, False):
            a, b = select_topk(_on(s), k, mode, largest=largest), select_topk(s, k, mode, largest=largest)
            assert a.key_set() == b.key_set() and torch.equal(a.scores, b.scores)
            a, b = select_seeded(_on(s), k, mode, largest=largest, seed=3), select_seeded(s, k, mode, largest=largest, seed=3)
            assert a.key_set() == b.key_set()
        w = {n: torch.randn(v.shape, generator=torch.Generator().manual_seed(2)) for n, v in s.items()}
        w[next(iter(w))].view(-1)[:50] = 0.0  # zeros cannot be zeroed: not eligible
        st = PerturbSettings("zero")
        a, b = bottom_k(_on(s), k, mode, _on(w), st, seed=4), bottom_k(s, k, mode, w, st, seed=4)
        assert a.key_set() == b.key_set()


@pytest.mark.parametrize("method", ["zero", "sign_flip", "gauss_noise", "bit_flip"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_perturb_restores_bits(method, dtype):
    from esa_nb.perturb import apply_perturbation, bits_view, restore
    g = torch.Generator().manual_seed(5)
    params = {f"w{i}": torch.randn(96, 40, generator=g).to(dtype).to(DEV) for i in range(3)}
    before = {n: bits_view(p).clone() for n, p in params.items()}
    sel = {n: torch.randperm(p.numel(), generator=g)[:37] for n, p in params.items()}
    for verify in ("tensor", "rows"):
        st = apply_perturbation(params, sel, method, scale=0.5, prob=1.0, generator=7, verify=verify)
        changed = sum(int((bits_view(p) != before[n]).sum()) for n, p in params.items())
        assert changed > 0
        restore(st)
        for n, p in params.items(): assert torch.equal(bits_view(p), before[n]), (method, n)
    # the damage itself is the CPU's (the generators live on the CPU)
    cpu = {n: p.cpu() for n, p in params.items()}
    apply_perturbation(params, sel, method, scale=0.5, generator=7); apply_perturbation(cpu, sel, method, scale=0.5, generator=7)
    for n in params:
        if method == "gauss_noise":  # w + σ·z: a fused multiply-add on the device may round the last bit differently
            torch.testing.assert_close(params[n].cpu(), cpu[n], rtol=1e-2 if dtype != torch.float32 else 1e-6, atol=0.0)
        else: assert torch.equal(bits_view(params[n]).cpu(), bits_view(cpu[n])), (method, n)


@pytest.mark.parametrize("metric", ["grad_x_weight", "grad_squared", "hessian_diag", "hutchinson_diag", "magnitude", "act_mag"])
def test_metrics_match_cpu(metric):
    from esa_nb.metrics import compute_scores
    from esa_nb.models import tiny_llama
    from esa_nb.weights import select_weights
    torch.manual_seed(0)
    m = tiny_llama().double()
    blocks = torch.randint(0, 257, (6, 24), generator=torch.Generator().manual_seed(1))
    kw = dict(batch_size=4, progress=False, hutchinson_samples=3, hessian_mc_samples=2, seed=2)
    ref = compute_scores(m, select_weights(m), blocks, metric, **kw).scores
    md = m.to(DEV)
    for chunk in (None, 7):
        res = compute_scores(md, select_weights(md), blocks, metric, loss_chunk=chunk, **kw)
        got = res.scores
        if res.raw is not None: assert {h.device.type for h in res.raw.values()} == {torch.device(DEV).type}  # room to keep h
        for n, r in ref.items():
            assert got[n].device.type == torch.device(DEV).type
            if metric == "hutchinson_diag" and DEV != "cpu":
                # the probes come from a generator on the parameter's device: a different draw, the same estimator
                assert torch.isfinite(got[n]).all(); continue
            # the fp32 buffers round each micro-batch's sum: entries that cancel across batches keep only absolute accuracy
            torch.testing.assert_close(got[n].cpu(), r, rtol=1e-6, atol=1e-6 * float(r.abs().max()) + 1e-300)
    m.cpu()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_chunked_loss(dtype):
    "The fused chunked loss on the device: values and a block weight's gradient equal the full-logits path's."
    from esa_nb.evaluate import evaluate, sequence_nll
    from esa_nb.models import tiny_llama
    torch.manual_seed(0)
    m = tiny_llama().to(dtype).to(DEV)
    ids = torch.randint(0, 257, (3, 40), generator=torch.Generator().manual_seed(3)).to(DEV)
    w = m.model.layers[1].mlp.up_proj.weight
    w.requires_grad_(True)
    s0 = sequence_nll(m, ids)[0]; g0, = torch.autograd.grad(s0.sum(), w)
    s1 = sequence_nll(m, ids, loss_chunk=16)[0]; g1, = torch.autograd.grad(s1.sum(), w)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2 * float(g0.abs().max()))
    torch.testing.assert_close(s1, s0, **tol); torch.testing.assert_close(g1.float(), g0.float(), **tol)
    w.requires_grad_(False)
    blocks = ids.cpu()
    a, b = evaluate(m, blocks, progress=False), evaluate(m, blocks, progress=False, loss_chunk=16)
    assert a["nll"] == pytest.approx(b["nll"], rel=1e-3)


def test_runner_end_to_end(tmp_path):
    "A whole run on the device: exit 0, the manifest names the device and its peak memory, the weights come back."
    from esa_nb.models import save_tiny
    model = save_tiny(tmp_path / "tiny", "llama")
    out = tmp_path / "run"
    code = "import sys; from esa_nb.runner import main; sys.exit(main(sys.argv[1:]))"
    args = ["--model", str(model), "--metric", "grad_x_weight", "--mode", "global", "--topk", "20", "--max-samples", "8",
            "--eval-samples", "8", "--seq-len", "32", "--perturb", "zero", "--controls", "random_k,bottom_k", "--seeds", "0,1",
            "--no-progress", "--device", DEV, "--out-dir", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    man = json.loads((out / "experiment_manifest.json").read_text())
    text = json.dumps(man)
    assert torch.device(DEV).type in text
    if DEV == "cuda": assert "peak_cuda_allocated_bytes" in text


def test_load_model_on_device(tmp_path):
    "One device: the weights load straight onto it, with no accelerate hooks and no device map recorded."
    from esa_nb.models import load_model, save_tiny
    d = save_tiny(tmp_path / "tiny", "llama")
    m, _ = load_model(str(d), device=DEV, dtype="fp32")  # auto would pick bf16 on CUDA
    ref, _ = load_model(str(d), device="cpu", dtype="fp32")
    assert {p.device.type for p in m.parameters()} == {torch.device(DEV).type}
    assert getattr(m, "hf_device_map", None) is None and m.esa_info["device_map"] is None
    assert not any(hasattr(mod, "_hf_hook") for mod in m.modules())
    ids = torch.randint(0, 257, (2, 9))
    with torch.no_grad(): torch.testing.assert_close(m(ids.to(DEV)).logits.cpu(), ref(ids).logits, rtol=1e-4, atol=1e-4)


def test_write_safetensors_from_device(tmp_path):
    "Tensors on the device are written in pieces through a pinned buffer: the file is byte-identical to the CPU tensors'."
    from esa_nb.store import write_safetensors
    g = torch.Generator().manual_seed(6)
    t = {"big": torch.randn(3_000_001, generator=g), "m": torch.randn(70, 33, generator=g), "e": torch.zeros(0), "i": torch.arange(5)}
    for dtype in (None, torch.float16):
        a, b = tmp_path / f"dev{dtype}.safetensors", tmp_path / f"cpu{dtype}.safetensors"
        fl = {n: v for n, v in t.items() if v.is_floating_point() or dtype is None}
        write_safetensors(a, _on(fl), {"x": "y"}, dtype); write_safetensors(b, fl, {"x": "y"}, dtype)
        assert a.read_bytes() == b.read_bytes(), dtype
