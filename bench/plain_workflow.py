#!/usr/bin/env python
"""The benchmark's reference: the analysis of `esa-runner --metric grad_x_weight --mode global --topk 100 --perturb zero
--controls random_k,bottom_k --seeds 0,1`, written the way a researcher would write it with plain PyTorch and transformers.

It loads the GGUF through transformers, deep-copies the model for every damaged condition, and concatenates all scores
for the global top-k. Usage: plain_workflow.py MODEL SEQ_LEN N_CALIB N_EVAL [DEVICE]; MODEL is a .gguf file or a
save_pretrained directory, DEVICE cpu (default) or cuda; prints one JSON line.
"""
import copy, json, sys, time
from pathlib import Path

import torch
from pydoc_data.topics import topics
from transformers import AutoModelForCausalLM, AutoTokenizer

src, T, n_cal, n_ev = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
dev = torch.device(sys.argv[5] if len(sys.argv) > 5 else "cpu")
t0 = time.perf_counter()
where = dict(pretrained_model_name_or_path=src) if src.is_dir() else dict(pretrained_model_name_or_path=src.parent, gguf_file=src.name)
tok = AutoTokenizer.from_pretrained(**where)
model = AutoModelForCausalLM.from_pretrained(**where, torch_dtype=torch.float32).to(dev).eval()
t_load = time.perf_counter() - t0

keys = sorted(topics)
cut = int(len(keys) * 0.8)
def blocks(ks):
    ids = tok("\n\n".join(topics[k] for k in ks), return_tensors="pt").input_ids[0]
    n = len(ids) // T
    return ids[: n * T].view(n, T).to(dev)
calib_all, evals = blocks(keys[:cut]), blocks(keys[cut:])[:n_ev]

def nll_per_block(m):
    out = []
    with torch.no_grad():
        for i in range(0, len(evals), 4):
            b = evals[i:i + 4]
            logits = m(b).logits[:, :-1].float()
            out.append(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), b[:, 1:].reshape(-1),
                                                         reduction="none").view(len(b), -1).sum(1))
    return torch.cat(out)

base = nll_per_block(model)
names = [n for n, p in model.named_parameters() if p.ndim == 2 and ".layers." in n]
params = dict(model.named_parameters())
results = {}
for seed in (0, 1):
    g = torch.Generator().manual_seed(seed)
    calib = calib_all[torch.randperm(len(calib_all), generator=g)[:n_cal].to(dev)]
    model.zero_grad()
    for i in range(0, len(calib), 4):
        b = calib[i:i + 4]
        (model(b, labels=b).loss * len(b) / len(calib)).backward()
    scores = torch.cat([(params[n].detach() * params[n].grad).abs().flatten() for n in names])  # every score, concatenated
    sizes = torch.tensor([params[n].numel() for n in names]).cumsum(0)
    top = torch.topk(scores, 100).indices
    sets = {"super_weights": top, "random_k": torch.randperm(len(scores), generator=g)[:100],
            "bottom_k": torch.topk(scores, 100, largest=False).indices}
    for cname, idx in sets.items():
        m2 = copy.deepcopy(model)  # a fresh copy per condition
        p2 = dict(m2.named_parameters())
        with torch.no_grad():
            for j in idx.tolist():
                t = int(torch.searchsorted(sizes, j, right=True)); off = j - (int(sizes[t - 1]) if t else 0)
                p2[names[t]].view(-1)[off] = 0.0
        d = nll_per_block(m2) - base
        results[f"{seed}/{cname}"] = float(d.sum() / (len(evals) * (T - 1)))
        del m2
    model.zero_grad(set_to_none=True)
peak = {"peak_cuda": torch.cuda.max_memory_allocated(dev)} if dev.type == "cuda" else {}
print(json.dumps({**peak, "load_s": t_load, "wall_s": time.perf_counter() - t0, "baseline_nll": float(base.sum() / (len(evals) * (T - 1))),
                  "delta_nll": results}))
