"""Hostile input, kills and concurrent debris: every case exits 2 with one clear message and no traceback, and loses nothing.

Issue §5 (tracebacks that should be messages), §6 (kills leave no debris) and §7 (messages that say what to do). The commands run
in-process (`call_main`) on the tiny models of `conftest.tiny_dirs`; only the kills need subprocesses."""
import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import assert_clean_error, call_main
from esa_nb import baseline, compare, models, report, runner
from esa_nb.core import LOCK_NAME, TEMP_RE, _host, read_json
from esa_nb.models import cache_dir, convert_gguf, save_tiny, tiny_tokenizer

LONG = "x" * 300  # longer than any file system's name limit (255 bytes)
CMDS = {"runner": runner.main, "baseline": baseline.main}


def _runner(model, out, *extra):
    return ["--model", str(model), "--device", "cpu", "--seq-len", "32", "--max-samples", "4", "--eval-samples", "4", "--topk", "5",
            "--mode", "global", "--metric", "magnitude", "--no-progress", "--n-boot", "50", "--out-dir", str(out), *extra]


def _baseline(model, out, *extra):
    return ["--model", str(model), "--device", "cpu", "--seq-len", "32", "--max-samples", "4", "--no-progress", "--out-dir", str(out), *extra]


ARGS = {"runner": _runner, "baseline": _baseline}


def _run(cmd, model, out, capsys, *extra): return call_main(CMDS[cmd], ARGS[cmd](model, out, *extra), capsys)


def _temps(d):
    "esa_nb's temporary files and directories anywhere under d."
    return [p for p in d.rglob("*") if TEMP_RE.match(p.name)] if d.exists() else []


@pytest.fixture
def cache(tmp_path, monkeypatch):
    "A private ESA_NB_CACHE."
    monkeypatch.setenv("ESA_NB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def two_runs(tiny_dirs, tmp_path_factory):
    "Two finished esa-runner runs of one model (magnitude and grad_x_weight), for esa-compare."
    root = tmp_path_factory.mktemp("runs")
    for metric in ("magnitude", "grad_x_weight"):
        assert runner.main(_runner(tiny_dirs["llama"], root / metric, "--metric", metric, "--seeds", "1")) == 0
    return root / "magnitude", root / "grad_x_weight"


def _copy_model(tiny_dirs, tmp_path, name="m"):
    return shutil.copytree(tiny_dirs["llama"], tmp_path / name)


# §5 Models -------------------------------------------------------------------------------------------------------------------

DAMAGE = {
    "truncated weights": ("model.safetensors", lambda b: b[: len(b) // 2], ["model.safetensors", "truncated or not a safetensors file"]),
    "random-byte weights": ("model.safetensors", lambda b: os.urandom(len(b)), ["model.safetensors", "truncated or not a safetensors file"]),
    "config is a list": ("config.json", lambda b: b"[1, 2]", ["config.json holds a JSON list, not an object"]),
    "config is not JSON": ("config.json", lambda b: b"{model_type: llama", ["config.json is not valid JSON"]),
    "tokenizer config is a string": ("tokenizer_config.json", lambda b: b'"x"', ["tokenizer_config.json holds a JSON str"]),
}


@pytest.mark.parametrize("cmd", CMDS)
@pytest.mark.parametrize("case", DAMAGE)
def test_damaged_model_dir(case, cmd, tiny_dirs, tmp_path, capsys):
    f, damage, needles = DAMAGE[case]
    m = _copy_model(tiny_dirs, tmp_path)
    (m / f).write_bytes(damage((m / f).read_bytes()))
    assert_clean_error(_run(cmd, m, tmp_path / "run", capsys), *needles)
    assert not (tmp_path / "run").exists()  # refused before the run directory was touched


def test_tokenizer_larger_than_embedding(tiny_dirs, tmp_path, capsys):
    m = _copy_model(tiny_dirs, tmp_path)
    tok = tiny_tokenizer(); tok.add_tokens([f"<extra{i}>" for i in range(5)]); tok.save_pretrained(m)
    assert_clean_error(_run("runner", m, tmp_path / "run", capsys), "262 token ids", "only 257 rows", "another model")


def test_custom_code_names_the_flag(tiny_dirs, tmp_path, capsys):
    m = _copy_model(tiny_dirs, tmp_path)
    cfg = json.loads((m / "config.json").read_text())
    cfg.update(model_type="esa_custom", auto_map={"AutoConfig": "configuration.C", "AutoModelForCausalLM": "modeling.M"})
    (m / "config.json").write_text(json.dumps(cfg))
    assert_clean_error(_run("baseline", m, tmp_path / "run", capsys), "--trust-remote-code")


def test_offline_hub_message_does_not_suggest_what_is_set(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = _run("baseline", "no-such-org/no-such-model-xyz", tmp_path / "run", capsys)
    assert_clean_error(r, "HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE")
    assert "set HF_HUB_OFFLINE=1" not in r.stderr.replace("unset HF_HUB_OFFLINE", "")


def _fake_dequantize(gguf, dest):
    "Stands in for transformers' GGUF loader: writes a tiny Llama."
    save_tiny(dest, "llama")


def test_truncated_gguf_cache_is_rebuilt(tmp_path, cache, capsys, monkeypatch):
    monkeypatch.setattr(models, "_dequantize", _fake_dequantize)
    g = tmp_path / "m.gguf"; g.write_bytes(b"GGUF not really")
    assert _run("baseline", g, tmp_path / "a", capsys).returncode == 0
    (entry,) = (cache / "gguf").iterdir()
    w = entry / "model.safetensors"; w.write_bytes(w.read_bytes()[:4096])  # a full disk or a killed copy
    r = _run("baseline", g, tmp_path / "b", capsys)
    assert r.returncode == 0, r.stderr
    assert "is damaged or incomplete" in r.stderr and "rebuilding" in r.stderr
    assert read_json(tmp_path / "b" / "baseline_metrics.json")["ppl"] == read_json(tmp_path / "a" / "baseline_metrics.json")["ppl"]
    assert [p.name for p in (cache / "gguf").iterdir()] == [entry.name]  # rebuilt in place, no debris


def test_device_map_gpu_that_is_not_there(tiny_dirs, tmp_path, capsys):
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    r = _run("runner", tiny_dirs["llama"], tmp_path / "run", capsys, "--device-map", json.dumps({"": n}))
    assert_clean_error(r, f"on GPU {n}", "--device-map")


# §5 Caches -------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cmd", CMDS)
def test_cache_env_points_at_a_file(cmd, tiny_dirs, tmp_path, capsys, monkeypatch):
    (tmp_path / "cachefile").write_text("not a directory")
    monkeypatch.setenv("ESA_NB_CACHE", str(tmp_path / "cachefile"))
    assert_clean_error(_run(cmd, tiny_dirs["llama"], tmp_path / "run", capsys), "ESA_NB_CACHE", "is a file, not a directory")


@pytest.mark.parametrize("damage", [lambda b: b[:50], lambda b: pickle.dumps({"calib": [1, 2]}), lambda b: b""])
def test_corrupt_token_cache_is_a_miss(damage, tiny_dirs, tmp_path, cache, capsys):
    assert _run("baseline", tiny_dirs["llama"], tmp_path / "a", capsys).returncode == 0
    (f,) = (cache / "tokens").glob("*.safetensors")
    f.write_bytes(damage(f.read_bytes()))
    r = _run("baseline", tiny_dirs["llama"], tmp_path / "b", capsys)
    assert r.returncode == 0 and "ignoring the token cache" in r.stderr and "weights_only" not in r.stderr, r.stderr
    assert read_json(tmp_path / "b" / "baseline_metrics.json")["ppl"] == read_json(tmp_path / "a" / "baseline_metrics.json")["ppl"]
    assert f.stat().st_size > 1000  # rewritten whole


# §5 Seeds --------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", ["99999999999999999999999", "-1", "4294967296"])
@pytest.mark.parametrize("cmd", CMDS)
def test_seed_out_of_range(cmd, seed, tiny_dirs, tmp_path, capsys):
    flag = {"runner": "--seeds", "baseline": "--seed"}[cmd]
    assert_clean_error(_run(cmd, tiny_dirs["llama"], tmp_path / "run", capsys, flag, seed), flag, "out of range", "4294967295")
    assert not (tmp_path / "run").exists()


# §5 Filesystem ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cmd", ["runner", "baseline", "compare", "report"])
def test_out_dir_name_too_long(cmd, tiny_dirs, two_runs, tmp_path, capsys):
    out = tmp_path / LONG / "run"
    if cmd in CMDS: r = _run(cmd, tiny_dirs["llama"], out, capsys)
    elif cmd == "compare": r = call_main(compare.compare_main, [*two_runs, "--out-dir", out], capsys)
    else: r = call_main(report.main, ["phase1_baseline", "--out-dir", out], capsys)
    assert_clean_error(r, "at most 255 bytes", LONG[:40])


def _disk_full_after(monkeypatch, n):
    "Make every fsync after the first n fail with ENOSPC, as on a disk that fills up."
    real, calls = os.fsync, []
    def fsync(fd):
        calls.append(fd)
        if len(calls) > n: raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)
    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("cmd,n", [("runner", 1), ("runner", 3), ("runner", 5), ("baseline", 2)])
def test_disk_full_while_writing(cmd, n, tiny_dirs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    _disk_full_after(monkeypatch, n)
    r = _run(cmd, tiny_dirs["llama"], out, capsys, *(["--perturb", "zero"] if cmd == "runner" else []))
    assert_clean_error(r, "the disk is full: cannot write " + str(out), "free some space")
    monkeypatch.undo()
    assert not _temps(out)  # no temporary file left
    for f in out.rglob("*.json"): json.loads(f.read_text())  # every file written is whole
    for f in out.rglob("*.safetensors"):
        from safetensors import safe_open
        with safe_open(str(f), framework="pt"): pass
    assert not (out / LOCK_NAME).exists()  # released: the rerun, with space again, needs no --overwrite for the lock
    assert _run(cmd, tiny_dirs["llama"], out, capsys, *(["--overwrite"] if any(out.iterdir()) else [])).returncode == 0


@pytest.mark.parametrize("err,needle", [(errno.ENOSPC, "the disk is full"), (errno.EDQUOT, "quota"), (errno.EACCES, "permission denied"),
                                        (errno.EROFS, "read-only"), (errno.ENAMETOOLONG, "255 bytes")])
def test_fixable_os_errors_become_messages(err, needle, tiny_dirs, tmp_path, capsys, monkeypatch):
    "The last resort in cli_entry: an OSError the user can fix, raised where nothing checked in advance, names the path."
    real = os.replace
    def replace(src, dst):
        if str(dst).endswith("baseline_metrics.json"): raise OSError(err, os.strerror(err))
        return real(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    out = tmp_path / "run"
    assert_clean_error(_run("baseline", tiny_dirs["llama"], out, capsys), needle, str(out / "baseline_metrics.json"))
    assert not _temps(out) and not (out / LOCK_NAME).exists()
    assert read_json(out / "experiment_manifest.json")["status"] == "failed"


# §5 Environment --------------------------------------------------------------------------------------------------------------

ENVS = {
    "garbage WORLD_SIZE": ({"WORLD_SIZE": "two"}, ["WORLD_SIZE='two' is not an integer", "unset"]),
    "garbage RANK": ({"WORLD_SIZE": "2", "RANK": "first", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"},
                     ["RANK='first' is not an integer"]),
    "rank outside the world": ({"WORLD_SIZE": "2", "RANK": "5", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"},
                               ["inconsistent", "RANK=5"]),
    "stale torchrun variables": ({"WORLD_SIZE": "2", "RANK": "1"}, ["left over from another job", "MASTER_ADDR", "unset"]),
    "garbage timeout": ({"ESA_DIST_TIMEOUT_MIN": "soon"}, ["ESA_DIST_TIMEOUT_MIN='soon'", "positive number of minutes"]),
}


@pytest.mark.parametrize("cmd", CMDS)
@pytest.mark.parametrize("case", ENVS)
def test_garbled_environment(case, cmd, tiny_dirs, tmp_path, capsys, monkeypatch):
    env, needles = ENVS[case]
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ESA_DIST_TIMEOUT_MIN"): monkeypatch.delenv(k, raising=False)
    for k, v in env.items(): monkeypatch.setenv(k, v)
    if cmd == "baseline" and case == "garbage timeout": pytest.skip("esa-baseline is one process: it never reads the timeout")
    assert_clean_error(_run(cmd, tiny_dirs["llama"], tmp_path / "run", capsys), *needles)
    assert not (tmp_path / "run").exists()


# §5 esa-compare --------------------------------------------------------------------------------------------------------------

def _score(run): return next((run / "scores").glob("seed*.safetensors")).relative_to(run)


BROKEN_RUNS = {
    "corrupt sensitivity_stats.json": (lambda r: "sensitivity_stats.json", lambda b: b[: len(b) // 2], ["sensitivity_stats.json is not valid JSON"]),
    "top_weights.csv without its columns": (lambda r: "top_weights.csv", lambda b: b"name,value\na,1\n", ["lacks the column(s) rank, tensor, flat"]),
    "pickled score file": (_score, lambda b: pickle.dumps({"score/w": torch.ones(3)}), ["not a readable score file", "truncated or not a safetensors"]),
    "truncated score file": (_score, lambda b: b[: len(b) - 64], ["not a readable score file", "truncated or not a safetensors"]),
}


@pytest.mark.parametrize("case", BROKEN_RUNS)
def test_compare_damaged_run(case, two_runs, tmp_path, capsys):
    rel, damage, needles = BROKEN_RUNS[case]
    bad = shutil.copytree(two_runs[0], tmp_path / "bad")
    f = bad / rel(bad); f.write_bytes(damage(f.read_bytes()))
    r = call_main(compare.compare_main, [bad, two_runs[1], "--out-dir", tmp_path / "cmp"], capsys)
    assert_clean_error(r, *needles, str(f))
    assert not (tmp_path / "cmp").exists()


# §5 esa-report ---------------------------------------------------------------------------------------------------------------

def test_report_garbage_notebook(tmp_path, capsys, monkeypatch):
    g = tmp_path / "books" / "garbage.ipynb"; g.parent.mkdir(); g.write_text("{this is not a notebook")
    assert_clean_error(call_main(report.main, [g, "--params"], capsys), str(g), "not a readable notebook")
    monkeypatch.setenv("ESA_RUNBOOKS", str(g.parent))
    r = call_main(report.main, ["--list"], capsys)
    assert_clean_error(r, "1 runbook(s) cannot be read", str(g))
    assert "phase1_baseline" in r.stdout  # the readable ones are still listed


def test_report_unknown_kernel_writes_nothing(tmp_path, capsys):
    r = call_main(report.main, ["phase1_baseline", "--kernel", "nosuchkernel", "--out-dir", tmp_path / "rep"], capsys)
    assert_clean_error(r, "no Jupyter kernel named 'nosuchkernel'", "--kernel")
    assert not (tmp_path / "rep").exists()


def test_report_inner_usage_error_exits_2(tiny_dirs, tmp_path, capsys):
    r = call_main(report.main, ["phase1_baseline", "-p", "model", tiny_dirs["llama"], "-p", "seq_len", "1", "-p", "device", "cpu",
                                "--no-html", "--no-progress", "--out-dir", tmp_path / "rep"], capsys)
    assert_clean_error(r, "--seq-len must be at least 2 tokens (got 1)", "esa-report: error:")
    assert (tmp_path / "rep" / "phase1_baseline.ipynb").is_file()  # the executed notebook shows where


# §6 Kills leave no debris ----------------------------------------------------------------------------------------------------

def _killed(code):
    "Run `code` in a fresh Python that ends by SIGKILL (no cleanup runs)."
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]


def test_sigkill_while_writing_leaves_nothing_on_rerun(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "run"
    _killed(f"""
        import os, signal
        from pathlib import Path
        from esa_nb.core import claim_out_dir, atomic_path, write_json
        out = Path({str(out)!r})
        claim_out_dir(out)  # the run's lock, never released
        write_json(out/"experiment_manifest.json", {{"status": "running"}})
        with atomic_path(out/"scores"/"seed1.safetensors") as tmp:
            tmp.write_bytes(b"half a score file")
            os.kill(os.getpid(), signal.SIGKILL)
        """)
    assert len(_temps(out)) == 1 and (out / LOCK_NAME).exists()
    assert_clean_error(_run("runner", tiny_dirs["llama"], out, capsys), "stale lock", "--overwrite")
    assert _run("runner", tiny_dirs["llama"], out, capsys, "--overwrite", "--seeds", "1").returncode == 0
    assert not _temps(out) and not (out / LOCK_NAME).exists()
    assert read_json(out / "experiment_manifest.json")["status"] == "complete"


def test_sigkill_during_gguf_conversion(tmp_path, cache, capsys, monkeypatch):
    g = tmp_path / "m.gguf"; g.write_bytes(b"GGUF not really")
    _killed(f"""
        import os, signal
        from esa_nb import models
        def dequantize(gguf, dest):
            (dest/"model.safetensors").write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGKILL)
        models._dequantize = dequantize
        models.convert_gguf({str(g)!r})
        """)
    assert _temps(cache / "gguf")  # the hidden directories of the killed conversion
    monkeypatch.setattr(models, "_dequantize", _fake_dequantize)
    out, digest = convert_gguf(g)
    assert [p.name for p in (cache / "gguf").iterdir()] == [digest] and (out / "model.safetensors").stat().st_size > 1000


def test_live_writers_temp_files_are_kept(cache):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        d = cache_dir("tokens")
        t = d / f".abc.safetensors.{_host()}-{live.pid}.abcd1234.tmp"; t.write_text("being written")
        cache_dir("tokens")
        assert t.exists()  # another run is still writing it
    finally: live.kill(); live.wait()
    cache_dir("tokens")
    assert not t.exists()  # its writer is gone


# §7 Messages that say what to do ---------------------------------------------------------------------------------------------

def _corpus(path, n=12):
    path.write_text("\n\n".join(f"Document {i}. " + "The quick brown fox jumps over the lazy dog. " * 8 for i in range(n)))
    return path


@pytest.mark.parametrize("cmd", CMDS)
def test_missing_eval_file_names_its_flag(cmd, tiny_dirs, tmp_path, capsys):
    r = _run(cmd, tiny_dirs["llama"], tmp_path / "run", capsys, "--data-files", _corpus(tmp_path / "c.txt"),
             "--eval-files", tmp_path / "nope.txt")
    assert_clean_error(r, "--eval-files: ")
    assert "--data-files:" not in r.stderr


@pytest.mark.parametrize("which", ["--data-files", "--eval-files"])
def test_latin1_file_says_how_to_convert(which, tiny_dirs, tmp_path, capsys):
    latin = tmp_path / "latin.txt"
    latin.write_bytes("\n\n".join(f"Caf\xe9 cr\xe8me {i}. " * 20 for i in range(6)).encode("latin-1"))
    files = ["--data-files", latin] if which == "--data-files" else ["--data-files", _corpus(tmp_path / "c.txt"), "--eval-files", latin]
    r = _run("baseline", tiny_dirs["llama"], tmp_path / "run", capsys, *files)
    assert_clean_error(r, which, str(latin), "not UTF-8", "iconv -f latin1 -t utf-8")


def test_eval_samples_beyond_the_corpus_is_noted(tiny_dirs, tmp_path, capsys):
    r = call_main(runner.main, _runner(tiny_dirs["llama"], tmp_path / "run", "--data-files", _corpus(tmp_path / "c.txt"),
                                       "--eval-samples", "500", "--max-samples", "500", "--topk", "3"), capsys)
    assert r.returncode == 0, r.stderr
    assert "--eval-samples asks for 500 evaluation blocks, but the text holds only" in r.stderr
    assert "--max-samples asks for 500 calibration blocks" in r.stderr
    note = read_json(tmp_path / "run" / "experiment_manifest.json")["data"]["note"]
    assert "--eval-samples asks for 500" in note
