"""Shared fixtures: tiny models saved to disk (no downloads), and a way to run the commands as a user would."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    "Tiny Llama- and GPT-2-style models written with save_pretrained."
    from esa_nb.models import save_tiny
    root = tmp_path_factory.mktemp("models")
    return {"llama": save_tiny(root / "tiny-llama", "llama"), "gpt2": save_tiny(root / "tiny-gpt2", "gpt2")}


def run_cli(*args, check=None, timeout=600):
    "Run an installed console command in a subprocess; returns CompletedProcess with text output."
    exe = Path(sys.executable).parent / args[0]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    p = subprocess.run([str(exe), *map(str, args[1:])], capture_output=True, text=True, env=env, timeout=timeout)
    if check is not None:
        assert p.returncode == check, f"exit {p.returncode}\nSTDOUT:\n{p.stdout[-3000:]}\nSTDERR:\n{p.stderr[-3000:]}"
    return p


def assert_clean_error(p, *needles):
    "Exit code 2, one clear message, no traceback."
    assert p.returncode == 2, f"exit {p.returncode}\n{p.stderr[-2000:]}"
    assert "Traceback" not in p.stderr, p.stderr
    for n in needles:
        assert n.lower() in p.stderr.lower(), f"{n!r} not in:\n{p.stderr}"


class Result:
    def __init__(self, code, out, err): self.returncode, self.stdout, self.stderr = code, out, err


def call_main(main, argv, capsys):
    "Call a command's main in-process (fast); returns an object like CompletedProcess."
    capsys.readouterr()
    try: code = main([str(a) for a in argv])
    except SystemExit as e: code = e.code
    out, err = capsys.readouterr()
    return Result(code, out, err)
