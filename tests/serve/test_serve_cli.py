"""serve.py as a command: bad flags are one line and exit 2; SIGTERM and Ctrl-C drain the requests
in flight, then the server exits."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from conftest import free_port
from tiny_run import ROOT, load_script

from minigpt.model.config import GPTConfig
from minigpt.model.load import save_pretrained
from minigpt.model.model import GPT

serve = load_script(ROOT / "serve.py")


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "--init"),
        (["--init", "M", "--max-batch", "0"], "--max-batch"),
        (["--init", "M", "--max-queue", "-1"], "--max-queue"),
        (["--init", "M", "--port", "70000"], "--port"),
        (["--init", "M", "--api-key", ""], "--api-key"),
        (["--init", "M", "--drain", "-1"], "--drain"),
        (["--init", "M", "--quantize-group-size", "64"], "int4"),
        (["--init", "M", "--init", "M"], "two models are named"),
        (["--init", "M", "--chat-format", "nope"], "--chat-format"),
        (["--init", "/nonexistent/model"], "/nonexistent/model"),
    ],
)
def test_bad_flags_are_one_line(checkpoints, args, message, capsys):
    args = [str(checkpoints["tiny-a"]) if a == "M" else a for a in args]
    try:
        code = serve.main(args)
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    out = capsys.readouterr()
    assert code == 2, out.err
    assert out.out == ""
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.err


@pytest.fixture(scope="module")
def slower_checkpoint(tmp_path_factory) -> Path:
    """A model that takes a few milliseconds a token, so a 400-token answer is still running when the signal comes."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("serve_cli") / "slower"
    save_pretrained(GPT(GPTConfig(block_size=512, n_layer=2, n_head=2, n_embd=128)), path)
    return path


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow)])
def test_a_signal_drains_the_requests_in_flight_then_exits(slower_checkpoint, sig, code):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "serve.py", "--init", f"tiny={slower_checkpoint}", "--port", str(port), "--drain", "10"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
            time.sleep(0.1)
        chunks, started = [], threading.Event()
        body = {"model": "tiny", "prompt": "Hello", "max_tokens": 400, "stream": True, "temperature": 0}

        def ask():
            with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        chunks.append(json.loads(line[6:]))
                        started.set()

        client = threading.Thread(target=ask)
        client.start()
        assert started.wait(30)
        proc.send_signal(sig)
        client.join(30)
        assert proc.wait(30) == code
        finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]]
        assert finish == ["length"]  # the request in flight got its whole answer
        with pytest.raises(httpx.TransportError):  # and the server is gone
            httpx.get(f"{url}/v1/models", timeout=2)
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
