"""esa-runner under torchrun: two CPU processes (gloo) give the single-process results, and rank 0 alone writes."""
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import call_main
from esa_nb.distributed import torchrun_cmd
from esa_nb.runner import main

EXE = Path(sys.executable).parent / "esa-runner"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}


def _args(model, out, metric):
    # 5 calibration and 5 evaluation blocks: uneven shards (3 + 2) on two ranks
    return ["--model", str(model), "--device", "cpu", "--seq-len", "32", "--max-samples", "5", "--eval-samples", "5",
            "--metric", metric, "--topk", "8", "--mode", "global", "--seeds", "1", "--perturb", "gauss_noise",
            "--perturb-scale", "3", "--controls", "random_k,bottom_k", "--n-boot", "200", "--superweight-blocks", "2",
            "--no-progress", "--out-dir", str(out)]


def _torchrun(*args, timeout=600):
    # a native crash of a worker (SIGABRT/SIGSEGV inside torch or gloo, seen once under load) gets one retry
    for _ in range(2):
        p = subprocess.run(torchrun_cmd(2, EXE, *args), capture_output=True, text=True, env=ENV, timeout=timeout)
        if p.returncode == 0 or not re.search(r"exitcode\s*:\s*-(6|11)\b", p.stderr): return p
    return p


def _top(d):
    with open(d / "top_weights.csv", newline="") as f: return [(r["tensor"], int(r["flat"])) for r in csv.DictReader(f)]


def _j(d, name): return json.loads((d / name).read_text())


@pytest.mark.parametrize("metric", ["grad_x_weight", "grad_squared", "act_mag"])
def test_torchrun_matches_single_process(metric, tiny_dirs, tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    r = call_main(main, _args(tiny_dirs["llama"], one, metric), capsys)
    assert r.returncode == 0, r.stderr
    p = _torchrun(*_args(tiny_dirs["llama"], two, metric))
    assert p.returncode == 0, p.stderr[-4000:]
    assert p.stdout.count("baseline ppl") == 1  # only rank 0 reports
    # the same files, written once (by rank 0)
    assert sorted(x.relative_to(two).as_posix() for x in two.rglob("*")) == sorted(x.relative_to(one).as_posix() for x in one.rglob("*"))
    man = _j(two, "experiment_manifest.json")
    assert (man["world_size"], man["backend"], man["status"]) == (2, "gloo", "complete")
    assert _j(one, "experiment_manifest.json")["world_size"] == 1
    # Phase 2: scores (all-reduced fp32 sums: equal up to the order of additions) and the top-k
    a, b = load_file(one / "scores" / "seed1.safetensors"), load_file(two / "scores" / "seed1.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6 * float(a[k].abs().max()), msg=k)
    assert _top(two) == _top(one)
    # Phase 1: the per-block vector is gathered in block order
    b1, b2 = _j(one, "baseline_metrics.json"), _j(two, "baseline_metrics.json")
    assert b2["block_tokens"] == b1["block_tokens"] and b2["n_blocks"] == 5
    assert b2["nll"] == pytest.approx(b1["nll"], rel=1e-6)
    assert b2["block_nll_sum"] == pytest.approx(b1["block_nll_sum"], rel=1e-6)
    # Phase 3: the same damage on every rank, the same effects
    p1, p2 = _j(one, "perturbation_results.json"), _j(two, "perturbation_results.json")
    for c in ("super_weights", "random_k", "bottom_k"):
        assert p2[c]["delta_nll"] == pytest.approx(p1[c]["delta_nll"], rel=1e-4, abs=1e-7), c
        assert p2[c]["n_weights"] == p1[c]["n_weights"]
    assert abs(p1["super_weights"]["delta_nll"]) > 1e-5  # a real effect, so the comparison means something


def test_refused_run_directory_stops_every_rank(tiny_dirs, tmp_path):
    out = tmp_path / "taken"
    out.mkdir(); (out / "keep.txt").write_text("an earlier run")
    p = _torchrun(*_args(tiny_dirs["llama"], out, "magnitude"))
    assert p.returncode != 0
    assert "already holds a run" in p.stderr and "stopped because rank 0 failed" in p.stderr
    assert sorted(x.name for x in out.iterdir()) == ["keep.txt"]  # nothing written


def test_device_map_is_refused_under_torchrun(tiny_dirs, tmp_path):
    p = _torchrun(*_args(tiny_dirs["llama"], tmp_path / "r", "magnitude"), "--device-map", "auto")
    assert p.returncode != 0 and "cannot be combined with torchrun" in p.stderr
    assert not (tmp_path / "r").exists()
