"""Causal attribution through esa-runner: a saved model with a planted super weight, every output file, and bad input."""
import csv
import json

import pytest

from conftest import assert_clean_error, call_main
from esa_nb.runner import main


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    "A tiny Llama whose whole predictive power sits in one down-projection weight, saved with save_pretrained."
    from esa_nb.models import load_model, save_tiny
    from esa_nb.data import load_text
    from esa_nb.causal import plant_super_weight
    d = save_tiny(tmp_path_factory.mktemp("planted") / "m", "llama")
    m, tok = load_model(str(d), device="cpu", progress=False)
    data = load_text(tok, "pydoc", 32, max_samples=8, max_eval=8)
    name, flat = plant_super_weight(m, data.calib)
    m.save_pretrained(d)
    return d, name, flat


def _args(model, out, *extra):
    return ["--model", str(model), "--device", "cpu", "--seq-len", "32", "--max-samples", "8", "--eval-samples", "8",
            "--metric", "magnitude", "--mode", "global", "--topk", "20", "--no-progress", "--n-boot", "200",
            "--out-dir", str(out), *extra]


def test_the_core_is_the_planted_weight(planted, tmp_path, capsys):
    d, name, flat = planted
    out = tmp_path / "run"
    r = call_main(main, _args(d, out, "--seeds", "1,2", "--perturb", "zero", "--attribute", "--attribute-top", "5"), capsys)
    assert r.returncode == 0, r.stderr
    assert "causal core (1 weight(s)" in r.stdout and "model.layers.1.mlp.down_proj.weight[5, 9]" in r.stdout
    cc = json.loads((out / "causal_core.json").read_text())
    for s in ("1", "2"):
        core = cc["per_seed"][s]["core"]
        assert [(c["tensor"], c["flat"]) for c in core] == [(name, flat)]
        assert cc["per_seed"][s]["evaluations"] <= 25
        assert cc["per_seed"][s]["sufficiency"]["delta_nll"] >= 0.9 * cc["per_seed"][s]["full_delta_nll"]
    assert cc["core_jaccard"] == 1.0 and cc["hold"]["recovered_fraction"] == pytest.approx(1.0, abs=1e-9)
    rows = list(csv.DictReader(open(out / "causal_weights.csv")))
    assert len(rows) == 5 and rows[0]["in_core"] == "True" and rows[0]["n_seeds_selected"] == "2"
    assert {"rank", "tensor", "layer", "kind", "row", "col", "weight", "score", "delta_nll", "ci_low", "ci_high", "delta_ppl",
            "in_core", "spike_candidate", "n_seeds_selected"} <= set(rows[0])
    sr = list(csv.DictReader(open(out / "scale_response.csv")))
    assert [float(x["alpha"]) for x in sr] == [0.0, 0.5, 1.5, 2.0, 3.0]


BAD = {
    "attribute without a perturbation": (["--attribute"], ["needs a perturbation"]),
    "core fraction zero": (["--perturb", "zero", "--attribute", "--core-fraction", "0"], ["--core-fraction"]),
    "core fraction above one": (["--perturb", "zero", "--attribute", "--core-fraction", "1.5"], ["--core-fraction"]),
    "attribute-top above k": (["--perturb", "zero", "--attribute", "--attribute-top", "21"], ["--attribute-top 21"]),
    "scale list with garbage": (["--perturb", "scale", "--perturb-scale", "0,x"], ["--perturb-scale"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_attribution_options(case, planted, tmp_path, capsys):
    extra, needles = BAD[case]
    assert_clean_error(call_main(main, _args(planted[0], tmp_path / "r", *extra), capsys), *needles)


WEIGHTS = {
    "unknown tensor": ("tensor,row,col\nmodel.layers.9.mlp.down_proj.weight,0,0\n", "not among the selected"),
    "out of range": ("tensor,row,col\nmodel.layers.1.mlp.down_proj.weight,5,99999\n", "outside"),
    "duplicate": ("tensor,row,col\nlayers.1.mlp.down_proj,5,9\nmodel.layers.1.mlp.down_proj.weight,5,9\n", "twice"),
    "no rows": ("tensor,row,col\n", "no weights"),
    "wrong columns": ("name,r,c\nx,1,2\n", "tensor,row,col"),
}


@pytest.mark.parametrize("case", list(WEIGHTS))
def test_bad_weights_file(case, planted, tmp_path, capsys):
    body, needle = WEIGHTS[case]
    (tmp_path / "w.csv").write_text(body)
    out = tmp_path / "r"
    r = call_main(main, _args(planted[0], out, "--perturb", "zero", "--controls", "random_k", "--weights", tmp_path / "w.csv"), capsys)
    assert_clean_error(r, "--weights", needle)
    assert not out.exists()  # refused before the run directory was claimed


def test_given_coordinates_and_save_damaged(planted, tmp_path, capsys):
    d, name, flat = planted
    (tmp_path / "w.csv").write_text("tensor,row,col\nlayers.1.mlp.down_proj,5,9\n")
    dmg = tmp_path / "damaged"
    r = call_main(main, _args(d, tmp_path / "r", "--perturb", "zero", "--controls", "random_k,matched_k", "--weights",
                              tmp_path / "w.csv", "--save-damaged", dmg), capsys)
    assert r.returncode == 0, r.stderr
    pr = json.loads((tmp_path / "r" / "perturbation_results.json").read_text())
    assert pr["super_weights"]["n_weights"] == 1 and pr["super_weights"]["delta_nll"] > 0.5
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(dmg)
    assert float(m.model.layers[1].mlp.down_proj.weight[5, 9]) == 0.0 and (dmg / "esa_damage.json").is_file()
    # a non-empty directory is refused without --overwrite, and one that is not a saved damaged model even with it
    assert_clean_error(call_main(main, _args(d, tmp_path / "r2", "--perturb", "zero", "--weights", tmp_path / "w.csv",
                                             "--controls", "random_k", "--save-damaged", dmg), capsys), "--overwrite")
    (tmp_path / "mine").mkdir(); (tmp_path / "mine" / "x.txt").write_text("keep")
    assert_clean_error(call_main(main, _args(d, tmp_path / "r3", "--perturb", "zero", "--weights", tmp_path / "w.csv", "--overwrite",
                                             "--controls", "random_k", "--save-damaged", tmp_path / "mine"), capsys), "never cleared")
    assert (tmp_path / "mine" / "x.txt").read_text() == "keep"
