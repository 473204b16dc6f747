"""Issue §1-§4 of the hostile-input audit: --overwrite never deletes what is not an esa run, a run directory is claimed
atomically, saved scores are checked beyond their key, and everything is validated before anything is claimed."""
import json
import os
import platform

import pytest
import torch

from conftest import assert_clean_error, call_main
from esa_nb.core import LOCK_NAME, RunLock
from esa_nb.runner import main


def _args(model, out, *extra):
    return ["--model", str(model), "--device", "cpu", "--seq-len", "32", "--max-samples", "6", "--eval-samples", "6",
            "--topk", "10", "--mode", "global", "--no-progress", "--n-boot", "200", "--seeds", "1", "--out-dir", str(out), *extra]


def test_overwrite_never_touches_a_foreign_directory(tiny_dirs, tmp_path, capsys):
    d = tmp_path / "mine"; (d / "plots").mkdir(parents=True)
    for f in ("config.json", "dose_response.csv", "plots/x.png"): (d / f).write_text("user data")
    assert_clean_error(call_main(main, _args(tiny_dirs["llama"], d, "--overwrite"), capsys), "holds no esa_nb run")
    assert all((d / f).read_text() == "user data" for f in ("config.json", "dose_response.csv", "plots/x.png"))


def test_out_dir_inside_or_equal_to_the_model(tiny_dirs, tmp_path, capsys):
    import shutil
    m = tmp_path / "model"; shutil.copytree(tiny_dirs["llama"], m)
    before = (m / "config.json").read_text()
    for out in (m, m / "results"):
        assert_clean_error(call_main(main, _args(m, out, "--overwrite"), capsys), "input of the run")
    assert (m / "config.json").read_text() == before and not (m / "results").exists()


def test_a_refused_run_deletes_nothing(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "run"
    assert call_main(main, _args(tiny_dirs["llama"], out, "--perturb", "zero"), capsys).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    for bad in (["--perturb", "bit_flip", "--bit", "99"], ["--seq-len", "100000"], ["--include", "(["]):
        r = call_main(main, _args(tiny_dirs["llama"], out, "--overwrite", *[b for b in bad if b]), capsys)
        assert r.returncode == 2, (bad, r.stderr)
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before, bad


def test_bad_input_claims_nothing(tiny_dirs, tmp_path, capsys):
    for bad in (["--perturb", "bit_flip", "--bit", "99"], ["--seq-len", "100000"], ["--include", "(["], ["--scores-from", tmp_path / "nope"]):
        out = tmp_path / f"r{len(bad)}{bad[0][2:5]}"
        assert call_main(main, _args(tiny_dirs["llama"], out, *bad), capsys).returncode == 2
        assert not out.exists(), bad


def test_a_directory_in_use_is_refused(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "run"
    with RunLock(out):  # another live run holds it: the window between check and write no longer exists
        assert_clean_error(call_main(main, _args(tiny_dirs["llama"], out), capsys), "in use by another run")
    (out / LOCK_NAME).write_text(json.dumps({"pid": 2**22 + 4321, "host": platform.node(), "started": "earlier"}))  # killed
    assert_clean_error(call_main(main, _args(tiny_dirs["llama"], out), capsys), "stale lock", str(2**22 + 4321))
    assert call_main(main, _args(tiny_dirs["llama"], out, "--overwrite"), capsys).returncode == 0
    assert not (out / LOCK_NAME).exists()


def _corrupt_scores(path, how):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f: meta = f.metadata()
    t = load_file(path)
    if how == "shape": k = next(k for k, v in t.items() if v.ndim == 2 and v.shape[0] != v.shape[1]); t[k] = t[k].T.contiguous()
    else: t = dict(list(t.items())[:1])
    save_file(t, str(path), metadata=meta)


@pytest.mark.parametrize("how", ["shape", "partial"])
def test_scores_with_the_right_key_but_wrong_contents(how, tiny_dirs, tmp_path, capsys):
    a = tmp_path / "runs" / "a"
    assert call_main(main, _args(tiny_dirs["llama"], a), capsys).returncode == 0
    _corrupt_scores(a / "scores" / "seed1.safetensors", how)
    assert_clean_error(call_main(main, _args(tiny_dirs["llama"], tmp_path / "b", "--scores-from", a), capsys), "does not fit")
    sib = tmp_path / "runs" / "c"  # automatic reuse from a sibling: skipped with a warning, scores recomputed
    r = call_main(main, _args(tiny_dirs["llama"], sib), capsys)
    assert r.returncode == 0 and "ignoring saved scores" in r.stderr
    assert not json.loads((sib / "experiment_manifest.json").read_text())["score_reuse"]
