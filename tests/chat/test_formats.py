"""Chat formats: Jinja templates render exactly as transformers' apply_chat_template; the built-in
formats write their documented strings; segments add up to the rendered conversation."""

import json

import pytest
from tokenizers import Tokenizer as HFTokenizerObject
from tokenizers import models
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from minigpt.chat.formats import (
    FORMATS,
    TemplateFormat,
    chat_format,
    check_messages,
    formats_help,
    template_stop_strings,
)

# Templates in the styles found on the hub, written for these tests.
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Llama 2 style: the system prompt folded into the first user turn, roles must alternate
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set rest = messages[1:] %}{% set sys = messages[0]['content'] %}"
    "{% else %}{% set rest = messages %}{% set sys = none %}{% endif %}"
    "{% for m in rest %}"
    "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('roles must alternate user/assistant') }}{% endif %}"
    "{% if loop.first and sys is not none %}{% set text = '<<SYS>>\\n' + sys + '\\n<</SYS>>\\n\\n' + m['content'] %}"
    "{% else %}{% set text = m['content'] %}{% endif %}"
    "{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' + text | trim + ' [/INST]' }}"
    "{% else %}{{ ' ' + text | trim + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)
# a multi-line template: trim_blocks/lstrip_blocks matter; tojson, namespace, loop controls, strftime_now
# and the generation tag; refuses a system message
BLOCKS = """[{{ strftime_now('%Y') | length }} {{ unk_token }}]
{% set ns = namespace(turns=0) %}
{% for m in messages %}
    {% if m['role'] == 'system' %}
        {{ raise_exception('This model does not take a system message, got ' + m['content'] | tojson) }}
    {% endif %}
    {% set ns.turns = ns.turns + 1 %}
    {% if m['role'] == 'assistant' %}
<bot> {% generation %}{{ m['content'] }}{{ eos_token }}{% endgeneration %}

    {% else %}
<human {{ ns.turns }}> {{ m | tojson }}
    {% endif %}
    {% if ns.turns > 50 %}{% break %}{% endif %}
{% endfor %}
{% if add_generation_prompt %}
<bot>
{%- endif %}"""

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}],
    [
        {"role": "system", "content": "You are terse.\nVery terse."},
        {"role": "user", "content": '  Hello, «world» & <you> "quotes"  '},
        {"role": "assistant", "content": "Hi. 日本語も"},
        {"role": "user", "content": "Again?"},
    ],
    [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d\n\ne"},
    ],
]

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def hf_tokenizer(template: str) -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    obj = HFTokenizerObject(models.WordLevel(vocab, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=obj, chat_template=template, **SPECIAL)


def hf_render(tok, messages, add_generation_prompt=True):
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


@pytest.mark.parametrize("template", [CHATML, LLAMA2, BLOCKS], ids=["chatml", "llama2", "blocks"])
@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_template_renders_as_transformers(template, conversation, add_generation_prompt):
    messages = CONVERSATIONS[conversation]
    tok = hf_tokenizer(template)
    ours = TemplateFormat(template, SPECIAL)
    try:
        expected = hf_render(tok, messages, add_generation_prompt)
    except Exception as e:  # the template refuses this conversation: ours refuses it with the same message
        with pytest.raises(ValueError) as raised:
            ours.render(messages, add_generation_prompt)
        assert str(e).splitlines()[0] in str(raised.value) and "\n" not in str(raised.value)
        return
    assert ours.render(messages, add_generation_prompt) == expected
    segments = ours.segments(messages)
    assert "".join(text for text, _ in segments) == hf_render(tok, messages, False)
    replies = [text for text, learn in segments if learn]
    assert len(replies) == sum(m["role"] == "assistant" for m in messages)
    for text, m in zip(replies, [m for m in messages if m["role"] == "assistant"], strict=True):
        assert m["content"].strip() in text


def test_template_refusals_are_the_templates_message():
    system_first = CONVERSATIONS[1]
    with pytest.raises(ValueError, match="does not take a system message") as e:
        TemplateFormat(BLOCKS, SPECIAL).render(system_first)
    assert "\n" not in str(e.value)
    alternating = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(ValueError, match="roles must alternate"):
        TemplateFormat(LLAMA2, SPECIAL).render(alternating)
    with pytest.raises(ValueError, match="does not compile"):
        TemplateFormat("{% for m in messages %}", SPECIAL)


def test_sandbox_refuses_python_internals():
    with pytest.raises(ValueError, match="chat template failed"):
        TemplateFormat("{{ messages.__class__.__mro__[1].__subclasses__() }}", SPECIAL).render(CONVERSATIONS[0])


@pytest.mark.parametrize("where", ["jinja_file", "config_string", "config_named"])
def test_chat_format_reads_the_directory_as_transformers(tmp_path, where):
    tok = hf_tokenizer(CHATML)
    tok.save_pretrained(tmp_path)
    config_path = tmp_path / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    if where != "jinja_file":
        (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
        config["chat_template"] = (
            CHATML
            if where == "config_string"
            else [
                {"name": "default", "template": CHATML},
                {"name": "other", "template": LLAMA2},
            ]
        )
        config_path.write_text(json.dumps(config))
    fmt = chat_format(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for messages in CONVERSATIONS:
        assert fmt.render(messages) == hf_render(loaded, messages)
    assert fmt.stop_strings == ("</s>", "<|im_end|>")


def test_stop_strings_rule():
    assert template_stop_strings(CHATML, "<|endoftext|>") == ("<|endoftext|>", "<|im_end|>")
    assert template_stop_strings(LLAMA2, "</s>") == ("</s>", "[INST]")
    assert template_stop_strings("{{ messages[0]['content'] }}<|eot_id|>", None) == ("<|eot_id|>",)


def test_builtin_formats_documented_strings():
    messages = [
        {"role": "user", "content": "Hi\nthere"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "How?"},
    ]
    with_system = [{"role": "system", "content": "Be kind."}, *messages]
    assert FORMATS["minigpt"].render(with_system) == (
        "System: Be kind.\nUser: Hi\nthere\nAssistant: Hello<|endoftext|>\nUser: How?\nAssistant:"
    )
    # rinna's model card: utterances "speaker: text" joined by <NL>, newlines as <NL>, ending "システム: "
    assert (
        FORMATS["rinna"].render(messages) == "ユーザー: Hi<NL>there<NL>システム: Hello<NL>ユーザー: How?<NL>システム: "
    )
    assert FORMATS["dialogue"].render(with_system) == "Be kind.\nA: Hi\nthere\nB: Hello\nA: How?\nB:"
    assert FORMATS["dialogue"].render(messages, add_generation_prompt=False) == "A: Hi\nthere\nB: Hello\nA: How?\n"
    assert FORMATS["minigpt"].segments(messages) == [
        ("User: Hi\nthere\nAssistant:", False),
        (" Hello<|endoftext|>", True),
        ("\nUser: How?\n", False),
    ]
    assert FORMATS["rinna"].segments(messages[:2]) == [("ユーザー: Hi<NL>there<NL>システム: ", False), ("Hello", True)]
    assert FORMATS["rinna"].reply_text("a<NL>b") == "a\nb"
    assert FORMATS["dialogue"].stop_strings[0] == "\nA:"


@pytest.mark.parametrize("name", list(FORMATS))
@pytest.mark.parametrize("conversation", range(1, len(CONVERSATIONS)))
def test_builtin_segments_add_up(name, conversation):
    fmt = FORMATS[name]
    messages = [m for m in CONVERSATIONS[conversation] if name != "rinna" or m["role"] != "system"]
    segments = fmt.segments(messages)
    assert "".join(t for t, _ in segments) == fmt.render(messages, add_generation_prompt=False)
    # the generic definition (from renders of the beginnings) finds the same replies, up to the turn's end
    generic = [t for t, learn in super(type(fmt), fmt).segments(messages) if learn]
    own = [t for t, learn in segments if learn]
    assert [t.removesuffix(fmt.turn_end) for t in generic] == own
    # a prompt then its reply re-renders as the conversation with that reply
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            reply = next(t for t, learn in fmt.segments(messages[: i + 1])[::-1] if learn)
            whole = fmt.render(messages[: i + 1], add_generation_prompt=False)
            assert whole == fmt.render(messages[:i]) + reply + fmt.turn_end


@pytest.mark.parametrize(
    "messages, message",
    [
        ({"role": "user"}, "must be a list"),
        (["hi"], "message 0 must be an object"),
        ([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}], "message 1 has an unknown role 'tool'"),
        ([{"content": "a"}], "message 0 has an unknown role None"),
        ([{"role": "user", "content": 3}], r"message 0 \(user\) needs 'content' as a string"),
    ],
)
def test_check_messages_bad_input(messages, message):
    with pytest.raises(ValueError, match=message) as e:
        check_messages(messages)
    assert "\n" not in str(e.value)


def test_rinna_has_no_system_role_and_unknown_names():
    with pytest.raises(ValueError, match="message 0: the rinna format has no system role"):
        FORMATS["rinna"].render([{"role": "system", "content": "x"}])
    with pytest.raises(ValueError, match="unknown chat format 'chatml'"):
        chat_format(None, "chatml")


def test_default_format_choice(tmp_path):
    assert chat_format(None).name == "dialogue"
    assert chat_format(tmp_path).name == "dialogue"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_format": "minigpt"}))
    assert chat_format(tmp_path).name == "minigpt"
    assert chat_format(tmp_path, "rinna").name == "rinna"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_format": "nope"}))
    with pytest.raises(ValueError, match="unknown chat_format 'nope'"):
        chat_format(tmp_path)
    for name in FORMATS:
        assert name in formats_help()
