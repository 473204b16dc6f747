"""The runbooks execute through `esa-report` (in-process `esa_nb.report.main`) on tiny models, leave an executed notebook
and an HTML report with the expected results in the report directory and nothing in nbs/; bad input exits 2, a failing
runbook exits 1; nbdev leaves the runbooks unexecuted, unexported and with their `parameters` tag."""
import json
import time
import warnings
from pathlib import Path

import nbformat
import pytest

from conftest import call_main
from esa_nb.report import main, list_runbooks, runbook_parameters

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
RUNBOOKS = NBS / "runbooks"
SMALL = ["-p", "seq_len", "32", "-p", "max_samples", "6", "-p", "eval_samples", "6", "-p", "device", "cpu"]


@pytest.fixture(autouse=True)
def nothing_written_into_nbs():
    "Every test: the runbook folder is unchanged, and no report, results or outputs appear anywhere under nbs/."
    before = {p: p.stat().st_mtime for p in RUNBOOKS.rglob("*")}
    t0 = time.time()
    yield
    assert {p: p.stat().st_mtime for p in RUNBOOKS.rglob("*")} == before
    new = [p for p in NBS.rglob("*") if p.stat().st_mtime >= t0 - 1 and
           (p.suffix == ".html" or p.name in ("results", "outputs", "experiment_manifest.json") or p.parent == RUNBOOKS)]
    assert not new, new


def report(capsys, runbook, out, *args):
    r = call_main(main, [runbook, *args, "--out-dir", out, "--no-progress"], capsys)
    assert r.returncode == 0, r.stderr[-3000:]
    nb_path, html_path = Path(out) / f"{runbook}.ipynb", Path(out) / f"{runbook}.html"
    assert nb_path.is_file() and html_path.is_file() and (Path(out) / "results").is_dir()
    nb = nbformat.read(str(nb_path), as_version=4)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    return nb, html_path.read_text(encoding="utf-8")


def n_charts(page):
    "Charts in a report page (nbconvert embeds each SVG output as a data: URI image)."
    return page.count('src="data:image/svg+xml')


def svg_text(nb):
    "The SVG charts of an executed notebook, as one string (their titles are text in it)."
    return "".join(o.get("data", {}).get("image/svg+xml", "") for c in nb.cells for o in c.get("outputs", []))


def injected(nb):
    "The papermill-injected parameters cell, executed in a namespace: name -> value as the notebook saw it."
    cell = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    ns = {}
    exec(cell.source, ns)
    return ns


def test_phase1_baseline(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "p1"
    nb, page = report(capsys, "phase1_baseline", out, "-p", "model", tiny_dirs["gpt2"], "-p", "seq_len", "32",
                      "-p", "max_samples", "4", "-p", "device", "cpu")
    assert injected(nb)["max_samples"] == 4 and injected(nb)["seq_len"] == 32  # typed ints, not strings
    b = json.loads((out / "results" / "baseline_metrics.json").read_text())
    assert b["n_blocks"] == 4
    assert "Per-block NLL" in page and n_charts(page) == 1 and f"{b['ppl']:.3f}" in page
    assert "skip_exec" not in page  # the frontmatter stays out of the report


def test_phase2_profiling(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "p2"
    nb, page = report(capsys, "phase2_profiling", out, "-p", "model", tiny_dirs["llama"], *SMALL, "-p", "topk", "10",
                      "-p", "seeds", "1,2")
    p = injected(nb)
    assert p["topk"] == 10 and isinstance(p["topk"], int) and p["seeds"] == "1,2"
    res = out / "results"
    for f in ("top_weights.csv", "sensitivity_stats.json", "superweight_candidates.json", "stability_summary.json"):
        assert (res / f).is_file(), f
    assert not (res / "perturbation_results.json").exists()
    for heading in ("How heavy is the tail?", "Super-weight candidates", "Stability across seeds", "The top weights"):
        assert heading in page, heading
    for title in ("Distribution of grad_x_weight scores", "Top-k stability across calibration seeds"):
        assert title in svg_text(nb), title
    assert n_charts(page) == 5  # distribution, layer comparison, heatmap, weight values, stability


def test_phase3_perturbation_verdict(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "p3"
    nb, page = report(capsys, "phase3_perturbation", out, "-p", "model", tiny_dirs["llama"], *SMALL, "-p", "topk", "5,10",
                      "-p", "seeds", "1,2", "-p", "perturb", "zero", "-p", "n_boot", "200")
    pr = json.loads((out / "results" / "perturbation_results.json").read_text())
    assert pr["perturb"] == "zero" and pr["topk"] == 10
    verdict = pr["verdict"]
    assert verdict.startswith(("PASS", "NOT MET"))
    assert "Verdict" in page and verdict.split(":")[0] + ":" in page
    text = "".join(o.get("data", {}).get("text/markdown", "") for c in nb.cells for o in c.get("outputs", []))
    assert verdict in text  # the verdict itself, verbatim, in the executed notebook
    for heading in ("Separation ratios", "Per seed", "Dose–response", "Stability of the selection"):
        assert heading in page, heading
    for title in ("Damage from perturbing the selected weights", "Dose response"):
        assert title in svg_text(nb), title
    assert (out / "results" / "dose_response.csv").is_file()


def test_comparison_metrics_and_models(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "cmp"
    nb, page = report(capsys, "comparison", out, "-p", "models", f"{tiny_dirs['llama']},{tiny_dirs['gpt2']}",
                      "-p", "metrics", "grad_x_weight,magnitude", *SMALL, "-p", "topk", "5", "-p", "seeds", "1",
                      "-p", "perturb", "sign_flip", "-p", "n_boot", "200")
    p = injected(nb)
    assert p["models"] == [str(tiny_dirs["llama"]), str(tiny_dirs["gpt2"])] and p["metrics"] == ["grad_x_weight", "magnitude"]
    res = out / "results"
    for slug in ("tiny-llama", "tiny-gpt2"):
        for metric in ("grad_x_weight", "magnitude"):
            assert (res / slug / metric / "perturbation_results.json").is_file()
        ag = json.loads((res / slug / "compare" / "agreement.json").read_text())
        assert len(ag["jaccard"]) == 2 and ag["jaccard"][0][0] == 1.0
    for heading in ("Agreement between metrics", "Side by side", "Where each run", "Perturbation, per combination"):
        assert heading in page, heading
    for title in ("Agreement between runs", "Damage from sign_flip"):
        assert title in svg_text(nb), title
    assert "tiny-llama/magnitude" in page and "tiny-gpt2/grad_x_weight" in page


def test_failing_runbook_on_bad_input_exits_2_with_report(tmp_path, capsys):
    out = tmp_path / "fail"
    r = call_main(main, ["phase2_profiling", "-p", "metric", "no_such_metric", "-p", "device", "cpu", "--out-dir", out,
                         "--no-progress"], capsys)
    assert r.returncode == 2, r.stderr
    assert "failed in cell" in r.stderr and "no_such_metric" in r.stderr and "Traceback" not in r.stderr
    assert (out / "phase2_profiling.ipynb").is_file() and (out / "phase2_profiling.html").is_file()
    assert "no_such_metric" in (out / "phase2_profiling.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("argv,needles", [
    (["phase9"], ["unknown runbook", "phase1_baseline, phase2_profiling"]),
    (["phase2_profiling", "-p", "topkk", "5"], ["unknown parameter topkk", "topk (int)", "--params"]),
    (["phase2_profiling", "-p", "topk", "lots"], ["parameter topk is int", "'lots'"]),
    (["phase2_profiling", "-p", "overwrite", "maybe"], ["true or false"]),
    (["phase2_profiling", "-p", "topk", "5", "-p", "topk", "6"], ["more than once"]),
    ([], ["name a runbook"]),
    (["phase1_baseline", "--out-dir", str(RUNBOOKS / "report")], ["never written there"]),
    (["phase1_baseline", "-p", "out_dir", str(NBS / "results")], ["never written there"]),
])
def test_bad_input_exits_2(argv, needles, tmp_path, capsys):
    if "--out-dir" not in argv: argv = argv + ["--out-dir", str(tmp_path / "r")]
    r = call_main(main, argv, capsys)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    for n in needles: assert n.lower() in r.stderr.lower(), (n, r.stderr)
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_existing_report_dir_needs_overwrite(tmp_path, capsys):
    (tmp_path / "r").mkdir(); (tmp_path / "r" / "old.txt").write_text("x")
    r = call_main(main, ["phase1_baseline", "--out-dir", tmp_path / "r"], capsys)
    assert r.returncode == 2 and "not empty" in r.stderr and "--overwrite" in r.stderr


def test_list_and_params(capsys):
    r = call_main(main, ["--list"], capsys)
    assert r.returncode == 0 and all(n in r.stdout for n in ("phase1_baseline", "phase2_profiling", "phase3_perturbation", "comparison"))
    r = call_main(main, ["phase3_perturbation", "--params"], capsys)
    assert r.returncode == 0 and "perturb_scale" in r.stdout and "float" in r.stdout and "bootstrap draws" in r.stdout


def test_runbooks_are_nbdev_safe():
    "nbdev_test skips them (skip_exec frontmatter), nbdev_export finds nothing to export, nbdev_clean keeps the parameters tag."
    from nbdev.clean import clean_nb
    from nbdev.test import test_nb
    from nbdev.config import get_config
    cfg = get_config(path=ROOT)
    assert set(list_runbooks()) == {"phase1_baseline", "phase2_profiling", "phase3_perturbation", "comparison"}
    for name, path in list_runbooks().items():
        assert path.parent == RUNBOOKS
        t = time.time()
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            assert test_nb(path) == (True, 0) and time.time() - t < 5, name  # skipped, not executed
        assert not [x for x in w if "YAML" in str(x.message)], name  # no '- key: value' bullets read as frontmatter
        nb = json.loads(path.read_text())
        assert nb["metadata"]["kernelspec"]["name"] == "python3"
        assert not any("default_exp" in "".join(c["source"]) or "#| export" in "".join(c["source"]) for c in nb["cells"])
        assert [c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", [])] and runbook_parameters(path)
        assert not any(c.get("outputs") for c in nb["cells"])  # committed without outputs
        before = json.dumps(nb, sort_keys=True)
        clean_nb(nb, clear_all=False, allowed_metadata_keys=cfg.get("allowed_metadata_keys", "").split(),
                 allowed_cell_metadata_keys=cfg.get("allowed_cell_metadata_keys", "").split(), clean_ids=True)
        assert json.dumps(nb, sort_keys=True) == before, name  # already clean: `make sync` leaves them alone
