"""esa-baseline end to end, and every bad input answered with a clear message and exit code 2."""
import json

import pytest

from conftest import assert_clean_error, call_main, run_cli
from esa_nb.baseline import main


def _base(model, out, *extra):
    return ["esa-baseline", "--model", model, "--device", "cpu", "--seq-len", "64", "--max-samples", "4",
            "--no-progress", "--out-dir", out, *extra]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_baseline_end_to_end(tiny_dirs, tmp_path, family, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.delenv("ESA_NB_HOST_TUNING", raising=False)
    if family == "gpt2": monkeypatch.setenv("ESA_NB_HOST_TUNING", "0")  # the opt-out: the allocator is left as it is
    p = run_cli(*_base(tiny_dirs[family], out), check=0)
    assert "baseline: ppl" in p.stdout and str(out) in p.stdout
    m = json.loads((out / "baseline_metrics.json").read_text())
    assert m["n_blocks"] == 4 and m["n_tokens"] == 4 * 63 and len(m["block_nll_sum"]) == 4
    assert 100 < m["ppl"] < 1000  # a random model over 257 byte tokens: about 257
    man = json.loads((out / "experiment_manifest.json").read_text())
    for key in ("command", "config", "versions", "device_name", "model", "data", "seeds", "started", "finished",
                "phase_seconds", "memory"):
        assert key in man, key
    assert man["data"]["eval_tokens_sha256"] and man["model"]["weight_sha256"]
    assert man["host_memory"]["tuned"] == (family != "gpt2"), man["host_memory"]  # esa_nb.host, before torch is imported
    assert json.loads((out / "config.json").read_text())["seq_len"] == 64
    # an existing run is never silently overwritten
    assert_clean_error(run_cli(*_base(tiny_dirs[family], out)), "--overwrite")
    run_cli(*_base(tiny_dirs[family], out, "--overwrite"), check=0)


def test_local_text_files(tiny_dirs, tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text("\n\n".join(f"Document {i}. " + "The quick brown fox jumps over the lazy dog. " * 20 for i in range(10)))
    out = tmp_path / "run"
    main(["--model", str(tiny_dirs["llama"]), "--device", "cpu", "--seq-len", "32", "--data-files", str(f),
          "--no-progress", "--out-dir", str(out)])
    assert json.loads((out / "baseline_metrics.json").read_text())["n_blocks"] > 0


BAD = {
    "unknown model id": (["--model", "no-such-org/no-such-model-xyz"], ["no-such-org/no-such-model-xyz", "HF_HUB_OFFLINE"]),
    "path that is not a model": (["--model", "{tmp}/notes.txt"], ["neither a model directory"]),
    "missing path": (["--model", "{tmp}/missing/"], ["neither a model directory"]),
    "unknown dataset": (["--dataset", "no_such_dataset_xyz"], ["could not load dataset", "no_such_dataset_xyz"]),
    "empty corpus": (["--data-files", "{tmp}/empty.txt"], ["document"]),
    "corpus too small": (["--data-files", "{tmp}/small.txt"], ["too small for one block"]),
    "max-samples zero": (["--max-samples", "0"], ["--max-samples", "positive"]),
    "max-samples negative": (["--max-samples", "-3"], ["--max-samples", "positive"]),
    "batch-size zero": (["--batch-size", "0"], ["--batch-size", "positive"]),
    "seq-len one": (["--seq-len", "1"], ["--seq-len", "at least 2"]),
    "seq-len beyond context": (["--seq-len", "100000"], ["longer than the model's context"]),
    "cuda without cuda": (["--device", "cuda"], ["cuda"]),
    "out-dir is a file": (["--out-dir", "{tmp}/notes.txt"], ["is a file"]),
    "out-dir not writable": (["--out-dir", "{tmp}/notes.txt/sub"], ["not writable"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(case, tiny_dirs, tmp_path, capsys):
    import torch
    if case == "cuda without cuda" and torch.cuda.is_available(): pytest.skip("this machine has CUDA")
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / "empty.txt").write_text("\n\n\n")
    (tmp_path / "small.txt").write_text("one tiny document.\n\nand another.\n")
    extra, needles = BAD[case]
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    args = ["--model", tiny_dirs["llama"], "--device", "cpu", "--seq-len", "64", "--max-samples", "2",
            "--no-progress", "--out-dir", tmp_path / "run"]
    # later flags win in argparse
    assert_clean_error(call_main(main, args + extra, capsys), *needles)


def test_bad_input_subprocess(tmp_path):
    "The installed command itself exits 2 with one paragraph and no traceback."
    assert_clean_error(run_cli("esa-baseline", "--model", tmp_path / "missing/", "--out-dir", tmp_path / "run"),
                       "neither a model directory")


def test_refused_under_torchrun(tiny_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert_clean_error(call_main(main, ["--model", tiny_dirs["llama"], "--out-dir", tmp_path / "r"], capsys), "esa-runner")
