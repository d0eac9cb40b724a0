"""Chat formats: how a conversation (a list of messages) becomes the text a model continues.

A message is a dict {"role": "system" | "user" | "assistant", "content": str}. A `ChatFormat`
renders messages as prompt text, names the end-of-turn strings that generation stops at, and cuts
a rendered conversation into segments marked with what the model should learn to produce (for SFT).

Two kinds:

- a model's own Jinja `chat_template` (tokenizer_config.json or chat_template.jinja), rendered
  exactly as transformers' `tokenizer.apply_chat_template(messages, tokenize=False,
  add_generation_prompt=True)` renders it: jinja2's immutable sandbox with trim_blocks and
  lstrip_blocks, the globals raise_exception and strftime_now, the tojson filter without HTML
  escaping, and the tokenizer's named special tokens (bos_token, eos_token, ...) as variables;
- the built-in formats of `FORMATS`: "minigpt" (SFT runs), "rinna" (rinna's instruction models),
  "dialogue" (a plain A:/B: dialogue any base model can continue).

`chat_format(directory, name)` picks one for a model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from minigpt.tokenizers.base import EOT_TOKEN, HF_CONFIG_FILE
from minigpt.tokenizers.hf_config import HFConfig

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}
ROLES = ("system", "user", "assistant")
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # transformers' file for a model's template (wins over the config's)
CHAT_FORMAT_KEY = "chat_format"  # tokenizer_config.json key naming a built-in format (written by SFT runs)

# End-of-turn markers of well-known templates. A template whose text contains one stops generation
# there: ChatML's <|im_end|>, Llama 3's <|eot_id|>, Phi-3's <|end|>, Gemma's <end_of_turn>, the
# end-of-text tokens, and Llama 2 / Mistral's [INST] (the model starting the user's next turn).
END_OF_TURN_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", EOT_TOKEN, "</s>", "[INST]")


def _one_line(text: str) -> str:
    lines = str(text).strip().splitlines()
    return lines[0] if lines else ""


def check_messages(messages) -> None:
    """ValueError (one line naming the message) unless messages is a list of {"role", "content"} dicts
    with a known role and string content."""
    if not isinstance(messages, list):
        raise ValueError(f"messages must be a list of {{'role', 'content'}} objects, not {type(messages).__name__}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"message {i} must be an object with 'role' and 'content', not {type(message).__name__}")
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"message {i} has an unknown role {role!r}; the roles are {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise ValueError(f"message {i} ({role}) needs 'content' as a string")


class ChatFormat:
    """A way to write a conversation as text. Subclasses set name, help and stop_strings and implement
    render; segments and reply_text have generic definitions."""

    name: str
    help: str
    stop_strings: tuple[str, ...]  # end-of-turn markers: generation stops at the first, which is not shown

    def render(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        """The conversation as text; with add_generation_prompt, followed by what starts the assistant's reply."""
        raise NotImplementedError

    def segments(self, messages: list[Message]) -> list[tuple[str, bool]]:
        """render(messages, add_generation_prompt=False) cut into consecutive pieces, each marked True if the
        model should learn to produce it (an assistant reply and its end-of-turn marker), False otherwise.

        Found from renders of the conversation's beginnings: what an assistant message adds to the text before
        it is its reply, less the part it shares with the generation prompt. ValueError if a message changes
        the text before it (the format does not render a conversation's beginning as a prefix)."""
        check_messages(messages)
        pieces: list[tuple[str, bool]] = []
        done = ""
        for i, message in enumerate(messages):
            whole = self._render(messages[: i + 1], False)
            if not whole.startswith(done):
                raise ValueError(f"the {self.name} format does not render message {i} after the ones before it")
            start = len(done)
            if message["role"] == "assistant":
                head = self._render(messages[:i], True)
                start = max(start, len(os.path.commonprefix([head, whole])))
                pieces.append((whole[len(done) : start], False))
            pieces.append((whole[start:], message["role"] == "assistant"))
            done = whole
        merged: list[tuple[str, bool]] = []
        for text, learn in pieces:
            if not text:
                continue
            if merged and merged[-1][1] == learn:
                merged[-1] = (merged[-1][0] + text, learn)
            else:
                merged.append((text, learn))
        return merged

    def _render(self, messages: list[Message], add_generation_prompt: bool) -> str:
        return self.render(messages, add_generation_prompt)

    def reply_text(self, generated: str) -> str:
        """A generated reply (the text before the stop string) as the assistant message's content."""
        return generated.strip()


@dataclass(frozen=True)
class TurnFormat(ChatFormat):
    """A built-in plain-text format. Each message is written

        header[role] + lead + content + (reply_end if assistant) + turn_end

    and messages are joined by separator; the generation prompt is (separator +) header["assistant"].
    lead (left out after an empty header), the reply and reply_end are what the model produces. A newline
    inside a message is written as newline (rinna's models write "<NL>"). A role without a header is refused."""

    name: str
    help: str
    header: dict[str, str]
    stop_strings: tuple[str, ...]
    lead: str = ""
    reply_end: str = ""
    turn_end: str = ""
    separator: str = ""
    newline: str = "\n"

    def _pieces(self, messages: list[Message], add_generation_prompt: bool) -> list[tuple[str, bool]]:
        check_messages(messages)
        pieces = []
        for i, message in enumerate(messages):
            role = message["role"]
            if role not in self.header:
                raise ValueError(f"message {i}: the {self.name} format has no {role} role")
            content = message["content"].replace("\n", self.newline)
            reply = role == "assistant"
            pieces += [
                (self.separator if i else "", False),
                (self.header[role], False),
                ((self.lead if self.header[role] else "") + content + (self.reply_end if reply else ""), reply),
                (self.turn_end, False),
            ]
        if add_generation_prompt:
            pieces += [(self.separator if messages else "", False), (self.header["assistant"], False)]
        return pieces

    def render(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        return "".join(text for text, _ in self._pieces(messages, add_generation_prompt))

    def segments(self, messages: list[Message]) -> list[tuple[str, bool]]:
        merged: list[tuple[str, bool]] = []
        for text, learn in self._pieces(messages, False):
            if text and merged and merged[-1][1] == learn:
                merged[-1] = (merged[-1][0] + text, learn)
            elif text:
                merged.append((text, learn))
        return merged

    def reply_text(self, generated: str) -> str:
        return generated.replace(self.newline, "\n").strip()


MINIGPT = TurnFormat(
    name="minigpt",
    help="minigpt's own (SFT runs): 'User: ...' / 'Assistant: ...' lines, each reply ending in <|endoftext|>",
    header={"system": "System:", "user": "User:", "assistant": "Assistant:"},
    lead=" ",
    reply_end=EOT_TOKEN,
    turn_end="\n",
    stop_strings=(EOT_TOKEN,),
)

# rinna's instruction-tuned models (model card): "ユーザー: ..." and "システム: ..." utterances joined by
# "<NL>" (their tokenizer has no newline; a newline inside an utterance is written <NL> too), the prompt
# ending in "システム: ". No system role. A reply ends with the tokenizer's eos, </s>.
RINNA = TurnFormat(
    name="rinna",
    help="rinna's instruction models: 'ユーザー: ...<NL>システム: ...' (model card), no system role",
    header={"user": "ユーザー: ", "assistant": "システム: "},
    separator="<NL>",
    newline="<NL>",
    stop_strings=("</s>", "<NL>ユーザー: "),
)

DIALOGUE = TurnFormat(
    name="dialogue",
    help="a plain 'A: ...' / 'B: ...' dialogue for base models such as GPT-2 (a system message is a first line)",
    header={"system": "", "user": "A:", "assistant": "B:"},
    lead=" ",
    turn_end="\n",
    stop_strings=("\nA:", EOT_TOKEN),
)

FORMATS: dict[str, TurnFormat] = {f.name: f for f in (MINIGPT, RINNA, DIALOGUE)}


def formats_help() -> str:
    """--format's help: the built-in formats and how the default is chosen."""
    names = "; ".join(f"{name}: {f.help}" for name, f in FORMATS.items())
    return (
        f"chat format ({names}). Default: the model's own chat_template, else the format its tokenizer_config.json "
        f"names ({CHAT_FORMAT_KEY!r}), else dialogue"
    )


# --- a model's own Jinja template -----------------------------------------------------------------------


class _GenerationTag(Extension):
    """{% generation %}...{% endgeneration %}, which some templates use to mark the assistant's text for
    transformers' assistant masks: here it simply renders its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # unlike jinja's own filter, no HTML escaping: the text goes to a model, not a web page
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format):
    return datetime.now().strftime(format)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, "jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def template_stop_strings(template: str, eos_token: str | None) -> tuple[str, ...]:
    """Where a template's turn ends: its eos_token, then each END_OF_TURN_MARKERS entry the template's text contains."""
    found = [eos_token] if eos_token else []
    found += [marker for marker in END_OF_TURN_MARKERS if marker in template]
    return tuple(dict.fromkeys(found))


class TemplateFormat(ChatFormat):
    """A model's own Jinja chat template, rendered as transformers renders it (see the module docstring)."""

    def __init__(self, template: str, special_tokens: dict[str, str] | None = None, name: str = "template"):
        self.name = name
        self.help = "the model's own chat_template"
        self.template_text = template
        self.special_tokens = dict(special_tokens or {})
        try:
            self.template = _environment().from_string(template)
        except jinja2.TemplateError as e:
            raise ValueError(f"the chat template does not compile: {_one_line(e)}") from None
        self.stop_strings = template_stop_strings(template, self.special_tokens.get("eos_token"))

    def render(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        check_messages(messages)
        if not messages:
            raise ValueError("the conversation is empty: give at least one message")
        return self._render(messages, add_generation_prompt)

    def _render(self, messages: list[Message], add_generation_prompt: bool) -> str:
        # as transformers does: keys whose value is None are dropped; tools and documents are None
        chat = [{key: value for key, value in m.items() if value is not None} for m in messages]
        try:
            return self.template.render(
                **self.special_tokens,
                messages=chat,
                tools=None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
            )
        except Exception as e:  # the template is foreign code: whatever it raises is its message, one line
            raise ValueError(f"the chat template failed: {_one_line(e) or type(e).__name__}") from None

    def reply_text(self, generated: str) -> str:
        return generated.strip()


def read_chat_template(directory: Path) -> str | None:
    """The directory's Jinja chat template as transformers finds it: chat_template.jinja, else
    tokenizer_config.json's "chat_template" (a string, or named templates of which "default" is used)."""
    path = directory / CHAT_TEMPLATE_FILE
    if path.is_file():
        return path.read_text(encoding="utf-8")
    config = directory / HF_CONFIG_FILE
    if not config.is_file():
        return None
    try:
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
    except (UnicodeDecodeError, ValueError, AttributeError) as e:
        raise ValueError(f"{config}: not a JSON object ({_one_line(e)})") from None
    if isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
        template = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
    if isinstance(template, dict):
        if "default" not in template:
            raise ValueError(f"{config}: its chat templates {sorted(map(str, template))} have no 'default'")
        template = template["default"]
    if template is not None and not isinstance(template, str):
        raise ValueError(f"{config}: chat_template must be a string, not {type(template).__name__}")
    return template


def chat_format(directory: str | Path | None, name: str | None = None) -> ChatFormat:
    """The chat format for a model whose tokenizer files lie in directory (None: no files, e.g. a GPT-2 preset).

    name (a FORMATS entry) wins; else the directory's own Jinja chat template; else the built-in format its
    tokenizer_config.json names under "chat_format" (SFT runs write it); else "dialogue"."""
    if name is not None:
        if name not in FORMATS:
            raise ValueError(f"unknown chat format {name!r}; the formats are {', '.join(FORMATS)}")
        return FORMATS[name]
    if directory is None:
        return DIALOGUE
    directory = Path(directory)
    template = read_chat_template(directory)
    config = HFConfig(directory)
    if template is not None:
        return TemplateFormat(template, config.special_tokens())
    named = config.get(CHAT_FORMAT_KEY)
    if named is not None:
        if named not in FORMATS:
            raise ValueError(
                f"{directory / HF_CONFIG_FILE}: unknown chat_format {named!r}; known: {', '.join(FORMATS)}"
            )
        return FORMATS[named]
    return DIALOGUE
