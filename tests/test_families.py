"""The family matrix: a tiny random model of every causal-LM family the installed transformers builds offline, dense and
mixture-of-experts, through the whole pipeline: the default selection and its coverage, all six metrics, the activation
spike scan (per expert in MoE blocks), and a perturbation of every selected tensor (3-D expert tensors included) with its
bit-identical restore. Plus bad input: MoE include patterns that match nothing, and a family whose weights ESA cannot handle."""
import csv
import json
import warnings

import pytest
import torch

from esa_nb.core import EsaError
from esa_nb.metrics import METRICS, compute_scores
from esa_nb.perturb import perturbed
from esa_nb.superweight import SpikeScan, down_projections, router_load, scan_superweights
from esa_nb.weights import KIND_GROUPS, select_weights, weight_coverage

V, H, I, L = 97, 32, 64, 2  # vocabulary, hidden, MLP width, layers
BASE = dict(vocab_size=V, hidden_size=H, intermediate_size=I, num_hidden_layers=L, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=64)
MOE = dict(num_experts=4, num_experts_per_tok=2)
# family -> (config class, model class, config kwargs, MoE?)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", BASE, False),
    "mistral": ("MistralConfig", "MistralForCausalLM", BASE, False),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", BASE, False),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(BASE, head_dim=8), False),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(BASE, pad_token_id=0, bos_token_id=1, eos_token_id=2), False),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(BASE, head_dim=8), False),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(BASE, head_dim=8), False),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(BASE, head_dim=8), False),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(vocab_size=V, n_embd=H, n_layer=L, n_head=4, n_positions=64,
                                                    bos_token_id=0, eos_token_id=0), False),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", BASE, False),
    "opt": ("OPTConfig", "OPTForCausalLM", dict(vocab_size=V, hidden_size=H, ffn_dim=I, num_hidden_layers=L, num_attention_heads=4,
                                                 max_position_embeddings=64, word_embed_proj_dim=H, eos_token_id=2), False),
    "olmo": ("OlmoConfig", "OlmoForCausalLM", dict(BASE, pad_token_id=0, eos_token_id=2), False),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", dict(BASE, pad_token_id=0, eos_token_id=2), False),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(BASE, num_local_experts=4, num_experts_per_tok=2), True),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", dict(BASE, **MOE, moe_intermediate_size=32,
                                                                 shared_expert_intermediate_size=48), True),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(BASE, **MOE, head_dim=8, moe_intermediate_size=32), True),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", dict(BASE, **MOE, pad_token_id=0, eos_token_id=2), True),
    # experts stored transposed ([E, in, out], x @ W[e]) with biases, gate/up interleaved
    "gpt_oss": ("GptOssConfig", "GptOssForCausalLM", dict(BASE, intermediate_size=32, head_dim=8, num_local_experts=4, num_experts_per_tok=2,
                                                           layer_types=["sliding_attention", "full_attention"], sliding_window=8), True),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    "Tiny models run fastest on one thread; on a shared machine OpenMP's waiting threads cost milliseconds per operation."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def build(family, seed=0):
    "The tiny model of a family (eval mode, gradients off), or a pytest skip saying why it cannot be built offline."
    import transformers
    cfg_name, model_name, kw, _ = FAMILIES[family]
    if not hasattr(transformers, model_name): pytest.skip(f"{family}: transformers {transformers.__version__} has no {model_name}")
    try:
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = getattr(transformers, model_name)(getattr(transformers, cfg_name)(**kw))
    except Exception as e:  # noqa: BLE001 - a family this transformers cannot build is skipped with the reason
        pytest.skip(f"{family}: cannot be instantiated offline ({type(e).__name__}: {str(e)[:200]})")
    return m.eval().requires_grad_(False)


@pytest.fixture(scope="module", params=list(FAMILIES))
def fam(request):
    "One family's tiny model, its default selection and calibration blocks, shared by the tests of this module."
    m = build(request.param)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default selection leaves nothing out, so it warns about nothing
        refs = select_weights(m)
    blocks = torch.randint(0, V, (3, 10), generator=torch.Generator().manual_seed(0))
    return {"name": request.param, "moe": FAMILIES[request.param][3], "model": m, "refs": refs, "blocks": blocks}


def test_coverage(fam):
    m, refs = fam["model"], fam["refs"]
    cov = weight_coverage(m, refs)
    assert cov["block_weights"]["fraction"] >= 0.95, (fam["name"], cov)
    assert cov["handled_fraction"] == 1.0 and cov["unhandled"] == []
    json.dumps(cov, allow_nan=False)
    groups = {r.group for r in refs}
    assert "attn" in groups, groups
    if fam["moe"]:
        assert {"experts", "router"} <= groups and cov["n_experts"] == 4
        fused = [r for r in refs if r.fused]
        assert len(fused) == 2 * L and all(r.param.ndim == 3 and r.shape[0] == 4 for r in fused)
        assert {r.kind for r in fused} == {"expert_gate_up", "expert_down"}
        assert all(r.transposed == (fam["name"] == "gpt_oss") for r in fused)
        assert [r.name for r in select_weights(m, include="experts") if r.fused] == [r.name for r in fused]
    else:
        assert groups == {"attn", "mlp"} and cov["n_experts"] == 0
    for alias in KIND_GROUPS:  # every alias that matches selects exactly its group
        try: sel = select_weights(m, include=alias)
        except EsaError: continue
        assert {r.group for r in sel} == {alias}, (alias, {r.group for r in sel})


@pytest.mark.parametrize("metric", METRICS)
def test_metric(fam, metric):
    m, refs = fam["model"], fam["refs"]
    res = compute_scores(m, refs, fam["blocks"], metric, batch_size=2, hutchinson_samples=1, hessian_mc_samples=1, progress=False)
    assert set(res.scores) == {r.name for r in refs}
    for r in refs:
        s = res.scores[r.name]
        assert s.shape == r.param.shape and s.dtype == torch.float32 and torch.isfinite(s).all() and (s >= 0).all(), r.name
    if fam["moe"] and metric != "magnitude":  # every layer's experts together get a signal from the routed tokens
        assert all(float(res.scores[r.name].sum()) > 0 for r in refs if r.fused), metric
    assert not any(p.requires_grad or p.grad is not None for p in m.parameters())


def test_spike_scan_during_profiling(fam):
    "The scan recorded on the scoring passes (as esa-runner does) equals a separate scan of the same blocks."
    m, blocks, refs = fam["model"], fam["blocks"], fam["refs"]
    if any(r.expert is not None and not r.fused for r in down_projections(m)): pytest.skip("per-expert layers: a separate pass")
    n = len(blocks) - 1  # the last batch straddles the limit
    with SpikeScan(m, n_blocks=n, threshold=0.0) as scan:
        compute_scores(m, refs, blocks, "grad_x_weight", batch_size=2, progress=False)
    a, b = scan.result(), scan_superweights(m, blocks[:n], threshold=0.0, progress=False)
    assert (a["n_blocks"], a["n_tokens"]) == (b["n_blocks"], b["n_tokens"])
    assert [(c["layer"], c["expert"], c["row"], c["col"]) for c in a["candidates"]] == [(c["layer"], c["expert"], c["row"], c["col"]) for c in b["candidates"]]
    for x, y in zip(a["layers"], b["layers"], strict=True):
        assert (x["n_tokens"], x["input_channel"], x["output_block"], x["output_position"]) == (y["n_tokens"], y["input_channel"], y["output_block"], y["output_position"])
        assert x["max_abs_output"] == pytest.approx(y["max_abs_output"], rel=1e-4)


def test_spike_scan(fam):
    m, blocks = fam["model"], fam["blocks"]
    res = scan_superweights(m, blocks, threshold=0.0, progress=False)
    json.dumps(res, allow_nan=False)
    assert res["candidates"] and all(c["primary"] for c in res["candidates"][:1])
    if fam["moe"]:
        experts = [x for x in res["layers"] if x["expert"] is not None]
        assert len(experts) + len(res["unrouted"]) == 4 * L and all(x["n_tokens"] > 0 for x in experts)
        assert sum(x["n_tokens"] for x in experts) == 2 * L * blocks.numel()  # top-2: every token visits two experts per layer
        load = router_load(m, blocks)
        assert len(load) == 4 * L and sum(r["tokens"] for r in load) == 2 * L * blocks.numel()
    else:
        assert len(res["layers"]) == L and all(x["expert"] is None for x in res["layers"])


def test_perturb_and_restore(fam):
    "A few entries of every selected tensor (3-D expert tensors too) sign-flipped, the output changes, and all bits come back."
    m, refs, blocks = fam["model"], fam["refs"], fam["blocks"]
    g = torch.Generator().manual_seed(1)
    sel = {r.name: torch.unique(torch.cat([torch.tensor([0, r.numel - 1]), torch.randint(0, r.numel, (3,), generator=g)])) for r in refs}
    before = {r.name: r.param.detach().clone() for r in refs}
    with torch.no_grad(): y0 = m(input_ids=blocks).logits
    with perturbed(m, sel, "sign_flip") as rec:
        assert rec["n_selected"] == sum(len(i) for i in sel.values())
        for r in refs:
            flat = r.param.detach().reshape(-1)
            assert torch.equal(flat[sel[r.name]], -before[r.name].reshape(-1)[sel[r.name]]), r.name
        with torch.no_grad(): y1 = m(input_ids=blocks).logits
        assert not torch.equal(y0, y1)
    with perturbed(m, sel, "bit_flip", bit="random", generator=0): pass
    for r in refs:  # bit-identical
        assert torch.equal(r.param.detach().view(torch.int32), before[r.name].view(torch.int32)), r.name
    with torch.no_grad(): assert torch.equal(m(input_ids=blocks).logits, y0)


def test_bad_input():
    "MoE include patterns that match nothing, and a family whose expert weights ESA cannot handle (DBRX), are clear errors."
    mx = build("mixtral")
    with pytest.raises(EsaError, match="select them with the alias 'experts'"):
        select_weights(mx, include=[r"block_sparse_moe\.experts\.\d+\.w1"])
    with pytest.raises(EsaError, match="no weights match"):
        select_weights(mx, include="experts", exclude="experts")
    import transformers
    cfg = transformers.DbrxConfig(vocab_size=V, d_model=H, n_heads=4, n_layers=L, max_seq_len=64,
                                  attn_config={"kv_n_heads": 2, "rope_theta": 1e4, "clip_qkv": 8.0},
                                  ffn_config={"ffn_hidden_size": I, "moe_num_experts": 4, "moe_top_k": 2})
    db = transformers.DbrxForCausalLM(cfg).eval().requires_grad_(False)
    with pytest.raises(EsaError, match=r"only \d+% of the weights inside the blocks .* cannot handle transformer\.blocks\.0\.ffn\.experts\.mlp\.w1"):
        select_weights(db)
    with pytest.warns(UserWarning, match="left out because ESA cannot handle their layout"):
        select_weights(db, include="blocks")
    with pytest.raises(EsaError, match="act_mag .* needs each"):
        compute_scores(db, select_weights(db, include=r"ffn\.experts\.mlp\.w1"), torch.zeros(1, 4, dtype=torch.long), "act_mag")


def test_moe_through_the_runner(tmp_path):
    "`--include experts` on a Mixtral: the runner scores the fused tensors, and top_weights.csv names each weight's expert."
    from esa_nb.config import EsaConfig
    from esa_nb.models import tiny_tokenizer
    from esa_nb.runner import run_esa
    import transformers
    torch.manual_seed(0)
    cfg = transformers.MixtralConfig(**dict(BASE, vocab_size=257, max_position_embeddings=256), num_local_experts=4, num_experts_per_tok=2)
    transformers.MixtralForCausalLM(cfg).save_pretrained(tmp_path / "mx"); tiny_tokenizer().save_pretrained(tmp_path / "mx")
    run_esa(EsaConfig(model=str(tmp_path / "mx"), include=["experts"], metric="grad_x_weight", mode="global", topk=20, device="cpu",
                      seq_len=16, max_samples=4, eval_samples=4, no_progress=True, n_boot=50, perturb="sign_flip",
                      out_dir=str(tmp_path / "run")))
    rows = list(csv.DictReader(open(tmp_path / "run" / "top_weights.csv")))
    assert rows and all(r["tensor"].endswith(("experts.gate_up_proj", "experts.down_proj")) for r in rows)
    assert all(r["expert"] in {"0", "1", "2", "3"} and r["kind"] in ("expert_gate_up", "expert_down") for r in rows)
    pr = json.loads((tmp_path / "run" / "perturbation_results.json").read_text())
    assert pr["all_restores_bit_identical"] and {"super_weights", "random_k"} <= set(pr)
    sw = json.loads((tmp_path / "run" / "superweight_candidates.json").read_text())
    assert len(sw["layers"]) + len(sw["unrouted"]) == 4 * L and {x["expert"] for x in sw["layers"]} <= {0, 1, 2, 3}
