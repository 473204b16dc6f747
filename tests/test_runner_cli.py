"""esa-runner and esa-compare: bad input (exit 2, one paragraph), reuse of saved scores, Ctrl-C safety, k sweeps."""
import json
from pathlib import Path

import pytest
import torch

from conftest import assert_clean_error, call_main, run_cli
from esa_nb import study
from esa_nb.runner import main
from esa_nb.compare import compare_main, agreement


def _args(model, out, *extra):
    return ["--model", str(model), "--device", "cpu", "--seq-len", "32", "--max-samples", "6", "--eval-samples", "6",
            "--topk", "10", "--mode", "global", "--no-progress", "--n-boot", "200", "--out-dir", str(out), *extra]


BAD = {
    "unknown metric": (["--metric", "fisher"], ["grad_x_weight", "grad_squared", "hessian_diag", "hutchinson_diag", "magnitude", "act_mag"]),
    "unknown perturbation": (["--perturb", "gaussian"], ["zero", "sign_flip", "gauss_noise", "bit_flip"]),
    "unknown control": (["--perturb", "zero", "--controls", "random_k,top_k"], ["random_k, bottom_k, matched_k"]),
    "prob above one": (["--perturb", "bit_flip", "--perturb-prob", "1.5"], ["prob"]),
    "prob negative": (["--perturb", "bit_flip", "--perturb-prob", "-0.1"], ["prob"]),
    "negative scale": (["--perturb", "sign_flip", "--perturb-scale", "-1"], ["scale"]),
    "non-integer seeds": (["--seeds", "1,two"], ["--seeds", "not an integer"]),
    "duplicate seeds": (["--seeds", "1,1"], ["--seeds", "duplicates"]),
    "stability with one seed": (["--seeds", "1", "--stability-check"], ["at least two seeds"]),
    "topk zero": (["--topk", "0"], ["--topk", "positive"]),
    "topk beyond a tensor in per_layer": (["--mode", "per_layer", "--topk", "100000"], ["larger than tensor"]),
    "topk beyond all weights": (["--topk", "100000000"], ["larger than the"]),
    "include matches nothing": (["--include", "no_such_module"], ["no weights match", "q_proj"]),
    "bad regex": (["--exclude", "(["], ["regular expression"]),
    "max-samples zero": (["--max-samples", "0"], ["--max-samples"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(case, tiny_dirs, tmp_path, capsys):
    extra, needles = BAD[case]
    assert_clean_error(call_main(main, _args(tiny_dirs["llama"], tmp_path / "run", *extra), capsys), *needles)


def test_bad_input_subprocess(tmp_path):
    p = run_cli("esa-runner", "--metric", "nope", "--out-dir", tmp_path / "r")
    assert_clean_error(p, "grad_x_weight", "act_mag")


def test_nan_scores_are_never_ranked(tmp_path, capsys):
    from esa_nb.models import save_tiny
    from transformers import AutoModelForCausalLM
    d = save_tiny(tmp_path / "m", "llama")
    m = AutoModelForCausalLM.from_pretrained(d)
    with torch.no_grad(): m.model.layers[1].mlp.up_proj.weight[3, 4] = float("nan")
    m.save_pretrained(d)
    r = call_main(main, _args(d, tmp_path / "run", "--metric", "magnitude"), capsys)
    assert_clean_error(r, "model.layers.1.mlp.up_proj.weight")


def test_scores_from_and_reuse(tiny_dirs, tmp_path, capsys):
    a = tmp_path / "prof"
    assert call_main(main, _args(tiny_dirs["llama"], a, "--seeds", "3,4"), capsys).returncode == 0
    # all four perturbations from one profiling run: no gradients recomputed
    calls = []
    orig = study.compute_scores
    study.compute_scores = lambda *x, **k: calls.append(1) or orig(*x, **k)
    try:
        for p in ("zero", "sign_flip", "gauss_noise", "bit_flip"):
            out = tmp_path / "elsewhere" / p
            r = call_main(main, _args(tiny_dirs["llama"], out, "--seeds", "3,4", "--perturb", p, "--perturb-prob", "0.5",
                                      "--scores-from", a), capsys)
            assert r.returncode == 0, r.stderr
            man = json.loads((out / "experiment_manifest.json").read_text())
            assert len(man["score_reuse"]) == 2
    finally: study.compute_scores = orig
    assert calls == []
    # scores from another metric, model or data are refused with the reason
    for extra, needle in ((["--metric", "magnitude"], "metric"), (["--seq-len", "24"], "calibration data")):
        r = call_main(main, _args(tiny_dirs["llama"], tmp_path / f"x{needle[:4]}", "--seeds", "3,4", "--scores-from", a, *extra), capsys)
        assert_clean_error(r, "--scores-from", needle)
    r = call_main(main, _args(tiny_dirs["gpt2"], tmp_path / "y", "--seeds", "3,4", "--scores-from", a), capsys)
    assert_clean_error(r, "--scores-from", "model")


def _interrupted(cmd, argv, capsys):
    "Run a command that is interrupted (Ctrl-C) at its first damaged condition, after every seed has been scored."
    orig = study.run_condition
    def boom(*a, **k): raise KeyboardInterrupt
    study.run_condition = boom
    try: return call_main(cmd, argv, capsys)
    finally: study.run_condition = orig


def test_ctrl_c_keeps_files_complete_and_rerun_reuses_scores(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "run"
    r = _interrupted(main, _args(tiny_dirs["llama"], out, "--seeds", "5", "--perturb", "zero"), capsys)
    assert r.returncode == 130
    for f in out.rglob("*"):  # everything written is complete: JSON parses, no temp files left
        assert not f.name.endswith(".tmp"), f
        if f.suffix == ".json": json.loads(f.read_text())
    assert (out / "scores" / "seed5.safetensors").is_file()
    r = call_main(main, _args(tiny_dirs["llama"], out, "--seeds", "5", "--perturb", "zero", "--overwrite"), capsys)
    assert r.returncode == 0
    assert json.loads((out / "experiment_manifest.json").read_text())["score_reuse"]


def test_k_sweep_and_compare(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "sweep"
    r = call_main(main, _args(tiny_dirs["gpt2"], out, "--topk", "5,10,20", "--perturb", "zero", "--seeds", "1"), capsys)
    assert r.returncode == 0, r.stderr
    import csv
    rows = list(csv.DictReader(open(out / "dose_response.csv")))
    assert {int(r["k"]) for r in rows} == {5, 10, 20} and {r["condition"] for r in rows} == {"super_weights", "random_k", "bottom_k"}
    assert {r["seed"] for r in rows} == {"1", "pooled"}
    mag = tmp_path / "mag"
    assert call_main(main, _args(tiny_dirs["gpt2"], mag, "--metric", "magnitude", "--seeds", "1"), capsys).returncode == 0
    cmp_out = tmp_path / "cmp"
    r = call_main(compare_main, [str(out), str(mag), "--topk", "10", "--out-dir", str(cmp_out)], capsys)
    assert r.returncode == 0, r.stderr
    ag = json.loads((cmp_out / "agreement.json").read_text())
    assert ag["jaccard"][0][0] == 1.0 and len(ag["spearman"]) == 2
    assert (cmp_out / "agreement_jaccard.csv").is_file()
    assert_clean_error(call_main(compare_main, [str(out), str(tmp_path)], capsys), "not an esa-runner run directory")


def test_default_out_dir_and_aliases(tiny_dirs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = run_cli("phase1_runner_enhanced", "--model", tiny_dirs["gpt2"], "--device", "cpu", "--seq-len", "32", "--max-samples",
                "4", "--eval-samples", "4", "--topk", "5", "--metric", "magnitude", "--save-plots", "--no-progress", check=0)
    d = tmp_path / "outputs" / "esa" / "tiny-gpt2" / "magnitude_per_layer_k5"
    assert (d / "top_weights.csv").is_file(), p.stdout
    assert run_cli("esa_runner", "--help", check=0).stdout.startswith("usage: esa-runner")


@pytest.mark.parametrize("metric", ["grad_x_weight", "grad_squared", "hessian_diag", "hutchinson_diag", "magnitude", "act_mag"])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_every_metric_through_the_runner(metric, family, tiny_dirs, tmp_path, capsys):
    out = tmp_path / "run"
    r = call_main(main, _args(tiny_dirs[family], out, "--metric", metric, "--seeds", "1", "--hutchinson-samples", "2"), capsys)
    assert r.returncode == 0, r.stderr
    import csv
    rows = list(csv.DictReader(open(out / "top_weights.csv")))
    assert len(rows) == 10 and all(float(x["score"]) >= 0 for x in rows) and {x["seed"] for x in rows} == {"1"}
    if metric in ("hessian_diag", "hutchinson_diag"): assert "hessian_diag" in rows[0]
    # coordinates are in the nn.Linear convention for both families: row < out_features, col < in_features
    from esa_nb.models import load_model
    from esa_nb.weights import select_weights
    m, _ = load_model(str(tiny_dirs[family]), device="cpu")
    refs = {w.name: w for w in select_weights(m)}
    for x in rows:
        ref = refs[x["tensor"]]
        assert int(x["row"]) < ref.shape[0] and int(x["col"]) < ref.shape[1]
        assert float(x["weight"]) == float(ref.linear_view()[int(x["row"]), int(x["col"])])


def test_compare_per_layer_takes_k_of_every_tensor(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "pl"
    assert call_main(main, _args(tiny_dirs["llama"], out, "--metric", "magnitude", "--mode", "per_layer", "--seeds", "1"),
                     capsys).returncode == 0
    ag = agreement([out, out], k=3)
    assert ag["union_size"] == 3 * 14 and ag["jaccard"][0][1] == 1.0  # 3 from each of the 14 block projections


def test_bit_flips_are_recorded(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "bf"
    r = call_main(main, _args(tiny_dirs["llama"], out, "--seeds", "7", "--perturb", "bit_flip", "--perturb-prob", "1.0",
                              "--bit", "sign"), capsys)
    assert r.returncode == 0, r.stderr
    bf = json.loads((out / "bit_flips.json").read_text())
    flips = bf["flips"]["10"]["super_weights"]["7"]
    assert len(flips["index"]) == 10 and set(flips["bit"]) == {31}
    assert all(o == -n for o, n in zip(flips["old"], flips["new"]))  # the sign bit negates


def test_review_guards(tiny_dirs, tmp_path, capsys):
    m = tiny_dirs["llama"]
    # every calibration block for every seed: stability would be 1 by construction
    assert_clean_error(call_main(main, _args(m, tmp_path / "a", "--seeds", "1,2", "--stability-check", "--max-samples",
                                             "100000"), capsys), "same calibration data")
    # random_k needs k weights outside the top-k of every tensor
    assert_clean_error(call_main(main, _args(m, tmp_path / "b", "--mode", "per_layer", "--topk", "300", "--perturb", "zero"),
                                 capsys), "random_k draws 300")
    # a corrupt score file given with --scores-from
    bad = tmp_path / "c" / "scores"; bad.mkdir(parents=True); (bad / "seed1.safetensors").write_bytes(b"not a file")
    assert_clean_error(call_main(main, _args(m, tmp_path / "d", "--seeds", "1", "--scores-from", tmp_path / "c"), capsys),
                       "not a readable score file")
    # --overwrite never leaves a previous run's results behind
    out = tmp_path / "e"
    assert call_main(main, _args(m, out, "--seeds", "1", "--perturb", "zero"), capsys).returncode == 0
    assert (out / "perturbation_results.json").is_file()
    assert call_main(main, _args(m, out, "--seeds", "1", "--overwrite"), capsys).returncode == 0
    assert not (out / "perturbation_results.json").exists() and (out / "scores" / "seed1.safetensors").is_file()
    # esa-compare refuses runs of different modes
    pl = tmp_path / "f"
    assert call_main(main, _args(m, pl, "--seeds", "1", "--mode", "per_layer", "--topk", "3"), capsys).returncode == 0
    assert_clean_error(call_main(compare_main, [str(out), str(pl), "--out-dir", str(tmp_path / "g")], capsys), "--mode")


def test_pooled_ci_over_seeds(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "p"
    assert call_main(main, _args(tiny_dirs["gpt2"], out, "--seeds", "1,2", "--perturb", "sign_flip"), capsys).returncode == 0
    pr = json.loads((out / "perturbation_results.json").read_text())
    sw = pr["super_weights"]
    assert "t-interval" in sw["ci_method"] and len(sw["delta_nll_per_seed"]) == 2
    # every condition keeps its per-block NLL sums, so any interval can be recomputed later
    assert all(len(sw["per_seed"][s]["block_nll_sum"]) == len(pr["baseline"]["block_nll_sum"]) for s in ("1", "2"))
    # top_weights.csv lists every seed's top-k, with a consensus rank
    import csv
    rows = list(csv.DictReader(open(out / "top_weights.csv")))
    assert {r["seed"] for r in rows} == {"1", "2"} and len(rows) == 20 and "consensus_rank" in rows[0]


def test_resume_an_interrupted_run(tiny_dirs, tmp_path, capsys):
    "Ctrl-C names the exact command to continue; --resume reuses the scored seeds; other options or a complete run are refused."
    out = tmp_path / "run"
    r = _interrupted(main, _args(tiny_dirs["llama"], out, "--seeds", "5,6", "--perturb", "zero"), capsys)
    assert r.returncode == 130 and "--resume" in r.stderr and str(out) in r.stderr
    assert json.loads((out / "experiment_manifest.json").read_text())["status"] == "interrupted"
    r = call_main(main, _args(tiny_dirs["llama"], out, "--seeds", "5,6", "--perturb", "zero", "--metric", "magnitude", "--resume"), capsys)
    assert_clean_error(r, "--resume", "other options", "--metric")
    r = call_main(main, _args(tiny_dirs["llama"], out, "--seeds", "5,6", "--perturb", "zero", "--resume"), capsys)
    assert r.returncode == 0, r.stderr
    man = json.loads((out / "experiment_manifest.json").read_text())
    assert man["status"] == "complete" and len(man["score_reuse"]) == 2  # both seeds' scores were kept from the interrupted run
    assert_clean_error(call_main(main, _args(tiny_dirs["llama"], out, "--seeds", "5,6", "--perturb", "zero", "--resume"), capsys),
                       "is complete")
    assert_clean_error(call_main(main, _args(tiny_dirs["llama"], tmp_path / "none", "--resume"), capsys), "no interrupted esa run")


def test_console_command_leaves_nothing_behind(tiny_dirs, tmp_path, monkeypatch):
    "esa-runner leaves with os._exit after a run: the summary is flushed, outputs complete, the work directory deleted."
    work = tmp_path / "tmp"; work.mkdir(); monkeypatch.setenv("TMPDIR", str(work))
    monkeypatch.delenv("ESA_NB_HOST_TUNING", raising=False)
    out = tmp_path / "run"
    p = run_cli("esa-runner", "--model", tiny_dirs["llama"], "--device", "cpu", "--seq-len", "32", "--max-samples", "4",
                "--eval-samples", "4", "--topk", "5", "--metric", "grad_x_weight", "--perturb", "zero", "--seeds", "0",
                "--no-progress", "--out-dir", out, check=0)
    assert p.stdout.rstrip().endswith(f"results in {out}"), p.stdout
    man = json.loads((out / "experiment_manifest.json").read_text())
    assert man["status"] == "complete" and (out / "perturbation_results.json").is_file()
    hm = man["host_memory"]  # the console script tuned the allocator before importing torch (esa_nb.host)
    assert hm["tuned"] and (hm["malloc"] is not None or hm["malloc_note"]), hm  # set, or a note says why not
    if hm["malloc_note"] is None: assert hm["malloc"] == {"mmap_threshold": 256 << 20, "trim_threshold": 2**31 - 1}, hm
    assert not list(work.iterdir()), list(work.iterdir())  # no esa-study-* work directory, no temporary file
    assert not [f for f in out.rglob("*") if f.name.endswith(".tmp") or f.name.endswith(".lock")]
