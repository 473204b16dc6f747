"""The text guard: a data file made of one sentence repeated is flagged, the builtin pydoc corpus is not, and esa-baseline
records the figures in baseline_metrics.json and prints the warning."""
import json

import pytest

from conftest import call_main
from esa_nb.baseline import main
from esa_nb.data import load_text
from esa_nb.evaluate import OVERLAP_WARN, REPEAT_WARN, text_overlap, text_warnings
from esa_nb.models import tiny_tokenizer

SENTENCE = "The quick brown fox jumps over the lazy dog. "


def _repeated(path):
    "One sentence repeated, in two documents (so calibration and evaluation are different documents)."
    if path.suffix == ".jsonl":
        path.write_text("\n".join(json.dumps({"text": SENTENCE * 200}) for _ in range(2)) + "\n")
    else:
        path.write_text(SENTENCE * 200 + "\n\n" + SENTENCE * 200 + "\n")
    return path


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_repeated_sentence_is_flagged(tmp_path, tok, suffix):
    data = load_text(tok, data_files=[_repeated(tmp_path / f"repeated{suffix}")], seq_len=64, max_eval=16, use_cache=False)
    o = text_overlap(data.calib, data.eval)
    assert o["eval_ngram_in_calib"] == 1.0 and o["eval_ngram_repeat"] == 1.0, o
    msgs = text_warnings(o)
    assert any("100% of the 32-token windows of the evaluation text also occur in the calibration text" in m for m in msgs)
    assert any("more than once" in m and "meaningless" in m for m in msgs)


@pytest.mark.parametrize("seq_len,max_eval", [(64, 16), (256, 64), (2048, None)])
def test_pydoc_is_not_flagged(tok, seq_len, max_eval):
    "The default corpus at the smoke and standard profiles and in full, with its own (imperfect) topic split."
    data = load_text(tok, "pydoc", seq_len, max_eval=max_eval)
    o = text_overlap(data.calib, data.eval)
    assert text_warnings(o) == [], o
    assert o["eval_ngram_in_calib"] < OVERLAP_WARN - 0.1 and o["eval_ngram_repeat"] < REPEAT_WARN - 0.2, o  # with a margin


def test_baseline_records_and_warns(tiny_dirs, tmp_path, capsys):
    f = _repeated(tmp_path / "repeated.txt")
    base = ["--model", tiny_dirs["llama"], "--device", "cpu", "--seq-len", "64", "--max-samples", "4", "--no-progress"]
    p = call_main(main, base + ["--data-files", f, "--out-dir", tmp_path / "rep"], capsys)
    assert p.returncode in (0, None), p.stderr
    m = json.loads((tmp_path / "rep" / "baseline_metrics.json").read_text())
    assert m["text_checks"]["eval_ngram_in_calib"] == 1.0 and m["text_checks"]["n"] == 32
    assert "SUSPECT EVALUATION TEXT" in p.stderr and "also occur in the calibration text" in p.stderr
    assert any(w.startswith("SUSPECT EVALUATION TEXT") for w in m["warnings"])
    # the default corpus: figures recorded, no warning
    p = call_main(main, base + ["--out-dir", tmp_path / "pydoc"], capsys)
    m = json.loads((tmp_path / "pydoc" / "baseline_metrics.json").read_text())
    assert m["text_checks"]["n_windows"] == 4 * 33 and "SUSPECT" not in p.stderr and m["warnings"] == []
