"""Every command line of the original runbooks parses and runs as written, with the model swapped for a local tiny one
(and --device cuda for cpu on machines without a GPU). Block length and evaluation size, which the runbooks leave at
their defaults, are made smaller so the whole set runs in a few minutes. The runbooks' `python phase1_runner_enhanced.py` /
`python esa_runner.py` are our installed `phase1_runner_enhanced` / `esa_runner` commands."""
import json
import shlex

import pytest
import torch

from esa_nb.runner import main

RUNBOOK_COMMANDS = {
    # ESA_RUNBOOK_phases_1-3.md
    "rb2_gradxw_perlayer": "--model M --metric grad_x_weight --mode per_layer --topk 100 --max-samples 200 --device cuda --save-plots --out-dir O",
    "rb3_gradxw_global": "--model M --metric grad_x_weight --mode global --topk 300 --max-samples 200 --device cuda --save-plots --out-dir O",
    "rb4_gradsq": "--model M --metric grad_squared --mode per_layer --topk 100 --max-samples 200 --device cuda --save-plots --out-dir O",
    "rb4_actmag": "--model M --metric act_mag --mode per_layer --topk 100 --max-samples 200 --device cuda --save-plots --out-dir O",
    "rb4_hutch": "--model M --metric hutchinson_diag --mode global --topk 100 --max-samples 120 --device cuda --save-plots --out-dir O",
    "rb5_signflip": "--model M --metric grad_x_weight --mode per_layer --topk 100 --max-samples 200 --perturb sign_flip --perturb-scale 1.0 --controls random_k,bottom_k --seeds 0,1,2 --stability-check --device cuda --save-plots --out-dir O",
    "rb6_zero": "--model M --metric grad_x_weight --mode per_layer --topk 100 --max-samples 200 --perturb zero --controls random_k,bottom_k --seeds 0,1,2 --stability-check --device cuda --save-plots --out-dir O",
    "rb7_gauss": "--model M --metric grad_x_weight --mode per_layer --topk 100 --max-samples 200 --perturb gauss_noise --perturb-scale 0.02 --controls random_k,bottom_k --seeds 0,1,2 --stability-check --device cuda --save-plots --out-dir O",
    "rb8_bitflip": "--model M --metric grad_x_weight --mode per_layer --topk 100 --max-samples 200 --perturb bit_flip --perturb-prob 0.05 --controls random_k,bottom_k --seeds 0,1,2 --stability-check --device cuda --save-plots --out-dir O",
    "rb9_hutch_signflip": "--model M --metric hutchinson_diag --mode global --topk 100 --max-samples 120 --perturb sign_flip --perturb-scale 1.0 --controls random_k,bottom_k --seeds 0,1,2 --stability-check --device cuda --save-plots --out-dir O",
    # ESA_RUNNER_usage_v2.md
    "v2_gradxw": "--model M --metric grad_x_weight --mode per_layer --topk 100 --max-samples 200 --seeds 1337,123,999 --stability-check --dtype bf16 --save-plots --verbose --out-dir O",
    "v2_actmag": "--model M --metric act_mag --mode per_layer --topk 100 --max-samples 200 --seeds 1337,123,999 --stability-check --save-plots --out-dir O",
    "v2_hutch": "--model M --metric hutchinson_diag --mode global --topk 300 --max-samples 120 --seeds 1337,123,999 --stability-check --save-plots --out-dir O",
    "v2_gradsq": "--model M --metric grad_squared --mode per_layer --topk 100 --max-samples 200 --seeds 1337,123,999 --stability-check --save-plots --out-dir O",
    "v2_quick": "--model M --metric grad_x_weight --topk 50 --max-samples 50 --seeds 1337 --verbose",
    "v2_full": "--model M --metric grad_x_weight --mode per_layer --topk 100 --seeds 1337,123,999 --stability-check",
    "v2_signflip_short": "--model M --metric grad_x_weight --perturb sign_flip --controls random_k,bottom_k --seeds 1337,123,999",
    "v2_gauss_short": "--model M --metric grad_x_weight --perturb gauss_noise --perturb-scale 0.02 --controls random_k,bottom_k --seeds 1337,123,999",
    "v2_hutch_signflip": "--model M --metric hutchinson_diag --perturb sign_flip --controls random_k,bottom_k --seeds 1337,123,999",
    "v2_deep": "--model M --metric grad_x_weight --topk 300 --max-samples 500 --seeds 1337,123,999,42,2023 --stability-check",
    # phase1_runner_enhanced_examples.md
    "old1": "--model M --metric grad_x_weight --topk 100 --mode global",
    "old2": "--model M --metric hutchinson_diag --topk 100 --mode global --seeds 42",
    "old3": "--model M --metric magnitude --topk 500 --mode per_layer --save-plots",
    "old4": "--model M --metric act_mag --topk 200 --mode global",
    "old5": "--model M --metric grad_x_weight --topk 100 --mode global --perturb sign_flip --perturb-scale 1.0 --controls random_k,bottom_k --save-plots",
    "old6": "--model M --metric grad_squared --topk 100 --perturb gauss_noise --perturb-scale 0.1 --controls random_k,bottom_k",
    "old7": "--model M --metric grad_x_weight --topk 100 --seeds 0,1,2,3,4 --stability-check --save-plots",
    "old8": "--model M --metric hutchinson_diag --topk 100 --mode global --perturb sign_flip --perturb-scale 1.0 --controls random_k,bottom_k --seeds 0,1,2 --stability-check --save-plots --out-dir O --verbose",
    "old9_metric_loop": "--model M --metric hessian_diag --topk 100 --mode global --controls random_k,bottom_k --out-dir O --save-plots",
    "old10_k_study": "--model M --metric grad_x_weight --topk 500 --mode global --perturb sign_flip --controls random_k,bottom_k --out-dir O",
}


def _argv(cmd, model, out):
    args = shlex.split(cmd)
    args[args.index("--model") + 1] = str(model)
    if "--device" in args and not torch.cuda.is_available(): args[args.index("--device") + 1] = "cpu"
    if "--out-dir" in args: args[args.index("--out-dir") + 1] = str(out)
    else: args += ["--out-dir", str(out)]  # the runbooks' default location would be outputs/esa/...; keep tests in tmp
    # only sizes the runbooks leave at their defaults are shrunk, to keep CI fast; every written flag is kept as is
    return args + ["--seq-len", "64", "--eval-samples", "16", "--no-progress"]


@pytest.mark.parametrize("name", list(RUNBOOK_COMMANDS))
def test_runbook_command(name, tiny_dirs, tmp_path):
    out = tmp_path / name
    assert main(_argv(RUNBOOK_COMMANDS[name], tiny_dirs["llama"], out)) == 0
    assert (out / "experiment_manifest.json").is_file() and (out / "top_weights.csv").is_file()
    assert (out / "sensitivity_stats.json").is_file() and (out / "superweight_candidates.json").is_file()
    man = json.loads((out / "experiment_manifest.json").read_text())
    assert man["status"] == "complete"
    if "--perturb" in RUNBOOK_COMMANDS[name]:
        pr = json.loads((out / "perturbation_results.json").read_text())
        for c in ("super_weights", "random_k", "bottom_k"):
            assert {"ppl_change", "accuracy_drop", "delta_nll_ci"} <= set(pr[c])
    if "--stability-check" in RUNBOOK_COMMANDS[name]:
        st = json.loads((out / "stability_summary.json").read_text())
        assert {"jaccard_mean", "jaccard_std", "jaccard_all", "num_seeds", "topk_overlap_size"} <= set(st)
