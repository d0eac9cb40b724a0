"""chat.py driven as a user drives it: a JSON conversation on standard input, and a session at a
terminal (a pseudo-terminal): turns, Ctrl-C during a reply, /save and /load, an overflow notice.
Bad input is one line on stderr and exit code 2 (or, at the prompt, one line and the prompt again)."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_run import ROOT, load_script

from minigpt.chat.formats import FORMATS
from minigpt.chat.session import ChatSession
from minigpt.generate.sampling import SamplingSettings
from minigpt.model.config import GPTConfig
from minigpt.model.load import from_pretrained, save_pretrained
from minigpt.model.model import GPT
from minigpt.tokenizers import GPT2Tokenizer

chat = load_script(ROOT / "chat.py")

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi."},
    {"role": "user", "content": "What now?"},
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random 1-layer GPT-2 (GPT-2's tokenizer, a 1024-token context)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("chat_ckpt") / "model"
    save_pretrained(GPT(GPTConfig(block_size=1024, n_layer=1, n_head=2, n_embd=16)), path)
    return path


def run_main(argv, stdin: bytes | None, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", None if stdin is None else io.TextIOWrapper(io.BytesIO(stdin)))
    try:
        code = chat.main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        code = e.code
    monkeypatch.undo()
    return code, capsys.readouterr()


def test_stdin_mode_prints_the_reply(checkpoint, monkeypatch, capsys):
    argv = ["--init", checkpoint, "--device", "cpu", "--temperature", "0", "--max-new-tokens", "12"]
    code, captured = run_main(argv, json.dumps(CONVERSATION).encode(), monkeypatch, capsys)
    assert code == 0, captured.err
    session = ChatSession(
        from_pretrained(checkpoint).eval(),
        GPT2Tokenizer(),
        FORMATS["dialogue"],
        SamplingSettings(temperature=0),
        max_new_tokens=12,
    )
    session.load(CONVERSATION[:-1])
    assert captured.out == session.say(CONVERSATION[-1]["content"]).text + "\n"
    assert captured.out.strip()
    # --messages FILE and --system give the same as the system message in the list
    path = checkpoint.parent / "conversation.json"
    path.write_text(json.dumps(CONVERSATION[1:]))
    code, again = run_main([*argv, "--messages", path, "--system", "Be brief."], b"", monkeypatch, capsys)
    assert code == 0 and again.out == captured.out


TEMPLATE_RAISES = (
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ raise_exception('users are not served here') }}"
    "{% endif %}{% endfor %}"
)


@pytest.mark.parametrize(
    "flags, stdin, message",
    [
        ([], b'[{"role": "tool", "content": "x"}]', "message 0 has an unknown role 'tool'"),
        ([], b'[{"role": "user", "content": "x"', "is not a JSON list of messages"),
        ([], b'{"role": "user", "content": "x"}', "messages must be a list"),
        ([], b"[\xff]", "is not a JSON list of messages"),
        ([], b'[{"role": "user", "content": 3}]', "needs 'content' as a string"),
        ([], b'[{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]', "must end with the user's"),
        ([], b"[]", "must end with the user's"),
        (["--format", "chatml"], b"[]", "invalid choice: 'chatml'"),
        (["--format", "rinna", "--system", "s"], b'[{"role": "user", "content": "x"}]', "no system role"),
        (["--messages", "/nonexistent/m.json"], b"", "cannot read /nonexistent/m.json"),
        (["--repetition-penalty", "0"], b'[{"role": "user", "content": "x"}]', "repetition_penalty must be"),
        (["--no-repeat-ngram-size", "-1"], b'[{"role": "user", "content": "x"}]', "no_repeat_ngram_size must be"),
        (["--min-new-tokens", "-1"], b'[{"role": "user", "content": "x"}]', "min_new_tokens must be"),
        (["--max-new-tokens", "0"], b'[{"role": "user", "content": "x"}]', "--max-new-tokens must be >= 1"),
        (["--max-new-tokens", "1024"], b'[{"role": "user", "content": "x"}]', "max_new_tokens must be between"),
        ([], json.dumps([{"role": "user", "content": "word " * 1100}]).encode(), "does not fit the context"),
        (["template"], b'[{"role": "user", "content": "x"}]', "the chat template failed: users are not served here"),
    ],
)
def test_bad_input_is_one_line(checkpoint, tmp_path, monkeypatch, capsys, flags, stdin, message):
    init = checkpoint
    if flags == ["template"]:
        init, flags = tmp_path / "model", []
        init.mkdir()
        for f in checkpoint.iterdir():
            (init / f.name).write_bytes(f.read_bytes())
        (init / "chat_template.jinja").write_text(TEMPLATE_RAISES)
    code, captured = run_main(["--init", init, "--device", "cpu", *flags], stdin, monkeypatch, capsys)
    err = captured.err.split("\n", 1)[1] if captured.err.startswith("loaded ") else captured.err
    assert code == 2 and captured.out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, captured.err
    assert message in err


class Terminal:
    """chat.py on a pseudo-terminal: write lines, read until some text appears."""

    def __init__(self, argv: list[str]):
        self.master, slave = pty.openpty()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env)
        os.close(slave)
        self.text = ""  # everything read, "\r\n" as "\n"
        self.seen = 0  # expect() looks after this

    def expect(self, what: str, timeout: float = 120) -> str:
        """The text up to and including what's next appearance (AssertionError after timeout)."""
        deadline = time.monotonic() + timeout
        while what not in self.text[self.seen :]:
            left = deadline - time.monotonic()
            assert left > 0, f"no {what!r} in {self.text[self.seen :]!r}"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    data = os.read(self.master, 4096)
                except OSError:  # the child closed the terminal
                    data = b""
                assert data, f"chat.py ended before {what!r}: {self.text[self.seen :]!r}"
                self.text += data.decode("utf-8", "replace").replace("\r\n", "\n")
        end = self.text.index(what, self.seen) + len(what)
        out, self.seen = self.text[self.seen : end], end
        return out

    def send(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=60)
        finally:
            os.close(self.master)


def test_a_session_at_the_terminal(checkpoint, tmp_path):
    saved, again = tmp_path / "conversation.json", tmp_path / "again.json"
    term = Terminal(
        [sys.executable, "chat.py", "--init", str(checkpoint), "--device", "cpu", "--temperature", "0",
         "--system", "Be brief."]
    )  # fmt: skip
    try:
        term.expect("Ctrl-D leaves")
        term.expect("> ")
        # three turns (256 new tokens each, the default for a 1024 context), then one that overflows
        for text in ("Hello", "How are you?", "Tell me more"):
            term.send(text)
            reply = term.expect("\n> ")
            assert "outgrew" not in reply and len(reply) > 50
        term.send("/save " + str(saved))
        term.expect("(saved 7 messages")
        messages = json.loads(saved.read_text())
        assert [m["role"] for m in messages] == ["system", *["user", "assistant"] * 3]
        assert messages[1]["content"] == "Hello" and messages[0]["content"] == "Be brief."
        term.send("/save " + str(saved))  # never over an existing file
        assert "error: " in term.expect("exists; /save writes only a new file")
        term.send("And then?")
        term.expect("dropped its 2 oldest messages)")
        term.expect("\n> ")
        # Ctrl-C during a reply: the reply stops, the prompt comes back
        term.send("One more")
        term.expect("One more\n")
        term.expect(" ")  # the reply has started
        term.proc.send_signal(signal.SIGINT)
        term.expect("(reply stopped)")
        term.expect("> ")
        # /load restores the saved state: saved again, it is the same
        term.send("/load " + str(saved))
        term.expect("(loaded 7 messages")
        term.send("/save " + str(again))
        term.expect("(saved 7 messages")
        assert json.loads(again.read_text()) == messages
        # bad input at the prompt: one line each, and the prompt again
        for line, message in [
            ("/load " + str(tmp_path / "missing.json"), "error: cannot read"),
            ("/load " + str(ROOT / "README.md"), "is not a JSON list of messages"),
            ("/frobnicate", "error: unknown command /frobnicate"),
            ("/save", "error: /save needs a file name"),
        ]:
            term.send(line)
            out = term.expect(message)
            assert "Traceback" not in out
            term.expect("> ")
        term.send("/reset")
        term.expect("(conversation reset)")
        term.send("/quit")
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
            term.proc.wait()
