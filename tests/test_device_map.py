"""A model split by a device map (accelerate's hooks) scores and evaluates like the unsplit model; offloaded weights are refused."""
import json

import pytest
import torch

from conftest import call_main
from esa_nb.evaluate import evaluate
from esa_nb.metrics import METRICS, compute_scores
from esa_nb.models import load_model
from esa_nb.weights import select_weights

DM = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
      "model.norm": "cpu", "lm_head": "cpu"}


def _blocks(n=5, T=24, seed=0): return torch.randint(0, 257, (n, T), generator=torch.Generator().manual_seed(seed))


def _hooked(d, dm=DM, **kw):
    "Load through accelerate with an explicit device map, then attach accelerate's hooks to every mapped module (one CPU only: forced)."
    from accelerate import dispatch_model
    m, _ = load_model(str(d), device="cpu", device_map=json.dumps(DM))
    dispatch_model(m, device_map=dm, main_device="cpu", force_hooks=True, **kw)
    return m


def _rel(a, b): return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture(scope="module")
def pair(tiny_dirs):
    ref, _ = load_model(str(tiny_dirs["llama"]), device="cpu")
    split = _hooked(tiny_dirs["llama"])
    assert hasattr(split.model.layers[1], "_hf_hook") and hasattr(split.lm_head, "_hf_hook")
    return ref, split


@pytest.mark.parametrize("metric", METRICS)
def test_scores_match_unsplit(pair, metric):
    ref, split = pair
    B = _blocks()
    kw = dict(batch_size=2, progress=False, hutchinson_samples=2, seed=4)
    a = compute_scores(ref, select_weights(ref), B, metric, **kw)
    b = compute_scores(split, select_weights(split), B, metric, **kw)
    for r in select_weights(split):
        s = b.scores[r.name]
        assert s.device == r.param.device and s.dtype == torch.float32  # the buffer lives beside its weight
        assert _rel(s, a.scores[r.name]) < 1e-5, r.name
    assert not any(p.requires_grad or p.grad is not None for p in split.parameters())


def test_chunked_loss_and_checkpointing_under_hooks(pair):
    ref, split = pair
    B = _blocks()
    a = compute_scores(ref, select_weights(ref), B, "grad_squared", progress=False)
    b = compute_scores(split, select_weights(split), B, "grad_squared", progress=False, loss_chunk=16, grad_checkpointing=True)
    for r in select_weights(split): assert _rel(b.scores[r.name], a.scores[r.name]) < 1e-5, r.name


def test_evaluation_matches_unsplit(pair):
    ref, split = pair
    E = _blocks(4, 32, seed=1)
    a, b = evaluate(ref, E, batch_size=3, progress=False), evaluate(split, E, batch_size=3, progress=False)
    assert b["block_tokens"] == a["block_tokens"]
    assert b["block_nll_sum"] == pytest.approx(a["block_nll_sum"], rel=1e-6)
    c = evaluate(split, E, batch_size=3, progress=False, loss_chunk=20)
    assert c["block_nll_sum"] == pytest.approx(a["block_nll_sum"], rel=1e-6)


def test_offloaded_weights_evaluate_but_are_not_scored(tiny_dirs, tmp_path):
    "A module offloaded to disk (weights on 'meta', streamed in per forward pass): evaluation works, scoring it is refused."
    from esa_nb.core import EsaError
    ref, _ = load_model(str(tiny_dirs["llama"]), device="cpu")
    off = _hooked(tiny_dirs["llama"], {**DM, "model.layers.1.mlp": "disk"}, offload_dir=str(tmp_path / "offload"))
    assert off.model.layers[1].mlp.down_proj.weight.device.type == "meta"
    E = _blocks(3, 32, seed=2)
    assert evaluate(off, E, progress=False)["nll"] == pytest.approx(evaluate(ref, E, progress=False)["nll"], rel=1e-6)
    with pytest.raises(EsaError, match="offloaded"): compute_scores(off, select_weights(off), E, "grad_x_weight", progress=False)
    # the resident weights can still be scored, gradients flowing back through the offloaded module
    keep = select_weights(off, include="layers.0")
    a = compute_scores(ref, select_weights(ref, include="layers.0"), E, "grad_x_weight", progress=False)
    b = compute_scores(off, keep, E, "grad_x_weight", progress=False)
    for r in keep: assert _rel(b.scores[r.name], a.scores[r.name]) < 1e-5


def test_cli_device_map(tiny_dirs, tmp_path, capsys):
    "esa-runner and esa-baseline accept --device-map and record it; results equal the run without it."
    from esa_nb.runner import main as runner_main
    from esa_nb.baseline import main as baseline_main
    common = ["--model", tiny_dirs["gpt2"], "--device", "cpu", "--seq-len", "32", "--max-samples", "4", "--eval-samples", "4",
              "--topk", "5", "--seeds", "2", "--no-progress"]
    gdm = json.dumps({"transformer": "cpu", "lm_head": "cpu"})
    assert call_main(runner_main, common + ["--out-dir", tmp_path / "a" / "plain"], capsys).returncode == 0
    r = call_main(runner_main, common + ["--out-dir", tmp_path / "b" / "split", "--device-map", gdm], capsys)
    assert r.returncode == 0, r.stderr
    man = json.loads((tmp_path / "b" / "split" / "experiment_manifest.json").read_text())
    assert man["model"]["device_map"] == {"transformer": "cpu", "lm_head": "cpu"} and man["scale"]["device_map"]
    from safetensors.torch import load_file
    A, B = load_file(tmp_path / "a" / "plain" / "scores" / "seed2.safetensors"), load_file(tmp_path / "b" / "split" / "scores" / "seed2.safetensors")
    for k in A: torch.testing.assert_close(B[k], A[k])
    r = call_main(baseline_main, ["--model", tiny_dirs["gpt2"], "--device", "cpu", "--seq-len", "32", "--max-samples", "4",
                                  "--no-progress", "--device-map", "auto", "--out-dir", tmp_path / "base"], capsys)
    assert r.returncode == 0, r.stderr
    r = call_main(baseline_main, ["--model", tiny_dirs["gpt2"], "--device-map", '{"lm_head": "gpu"}', "--out-dir", tmp_path / "bad"], capsys)
    assert r.returncode == 2 and "'gpu' of module 'lm_head'" in r.stderr and not (tmp_path / "bad").exists()
