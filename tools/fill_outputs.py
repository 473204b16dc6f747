#!/usr/bin/env python
"""Execute the literate notebooks and keep their small outputs (tables, charts as static SVG, a few lines of text), so the
rendered docs show them. Outputs that name a path of the machine that ran them, progress bars and logs are dropped, and
every notebook stays under 1 MB.

    .venv/bin/python tools/fill_outputs.py                 # every numbered notebook in nbs/
    .venv/bin/python tools/fill_outputs.py nbs/15_study.ipynb
"""
import json, os, re, sys
from pathlib import Path

from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell

ROOT = Path(__file__).resolve().parent.parent
MAX_NB = 1_000_000  # bytes per notebook
MAX_OUT = 200_000  # bytes per output
MAX_LINES = 30  # lines of printed text per cell
LOCAL = re.compile(r"(/tmp/|/work/|/root/|/home/|/Users/|\\\\Users\\\\|/var/folders/)")


def _size(o): return len(json.dumps(o, default=str))


def _keep(o:dict)->bool:
    "Whether an output is worth keeping: small, no local paths, no logs or progress bars, no live widgets."
    if o.get("output_type") == "stream":
        t = "".join(o.get("text", ""))
        return o.get("name") == "stdout" and t.count("\n") <= MAX_LINES and not LOCAL.search(t) and "\r" not in t
    if o.get("output_type") in ("execute_result", "display_data"):
        d = o.get("data", {})
        if "application/vnd.jupyter.widget-view+json" in d: return False
        return not any(LOCAL.search("".join(v) if isinstance(v, list) else str(v)) for v in d.values()) and _size(o) <= MAX_OUT
    return False


def fill(path:Path):
    nb = read_nb(path)
    sh = CaptureShell(path=path.parent)
    skip = lambda c: "nbdev_export()" in c.source or "#| eval: false" in c.source
    cwd = os.getcwd(); os.chdir(path.parent)
    try: sh.run_all(nb, exc_stop=True, preproc=skip)
    finally: os.chdir(cwd)
    for c in nb.cells:
        if c.cell_type != "code": continue
        c.outputs = [o for o in c.get("outputs", []) if _keep(o)]
        for o in c.outputs: o.pop("execution_count", None) if o.get("output_type") != "execute_result" else None
    cells = sorted((c for c in nb.cells if c.cell_type == "code"), key=lambda c: -_size(c.get("outputs", [])))
    while _size(nb) > MAX_NB and cells: cells.pop(0).outputs = []  # the largest outputs go first
    write_nb(nb, path)
    print(f"{path.name}: {path.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    paths = [Path(p) for p in sys.argv[1:]] or sorted((ROOT / "nbs").glob("[0-9][0-9]_*.ipynb"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for p in paths: fill(p.resolve())
