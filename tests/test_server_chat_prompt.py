"""How `/v1/chat/completions` builds its prompt (export/chat_prompt.py): the export's chat template rendered as
transformers renders it, the student's own format for a distilled student, and refusals that name the field.
In-process on the real export's files (tokenizer config, chat template, scotd.json); no model is loaded."""

from __future__ import annotations

import json
import shutil

import pytest
from scotd_harness.export.chat_prompt import ChatPrompter, ChatPromptError, open_question_input

from scotd_harness import formats

CONVERSATIONS = [
    [{"role": "user", "content": "Is ice cold?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Is ice cold?"},
     {"role": "assistant", "content": "Yes."}, {"role": "user", "content": [{"type": "text", "text": "Why?"}]}],
]


@pytest.fixture
def distilled_dir(onnx_student_int4_dir, tmp_path):
    """The export's text files with a `student` section in scotd.json, as `scotd train` + `scotd export` write."""
    for name in ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        shutil.copy(onnx_student_int4_dir / name, tmp_path / name)
    meta = json.loads((onnx_student_int4_dir / "scotd.json").read_text())
    meta["student"] = {"format_version": formats.FORMAT_VERSION, "corpus": "corpus.jsonl"}
    (tmp_path / "scotd.json").write_text(json.dumps(meta))
    return tmp_path, meta


def test_template_renders_as_transformers_does(onnx_student_int4_dir):
    from transformers import AutoTokenizer

    meta = json.loads((onnx_student_int4_dir / "scotd.json").read_text())
    prompter = ChatPrompter(onnx_student_int4_dir, meta)  # auto: not distilled, and the export has a template
    assert prompter.format == "template" and prompter.default_stop == ()
    tokenizer = AutoTokenizer.from_pretrained(onnx_student_int4_dir)
    for messages in CONVERSATIONS:
        flat = [{**m, "content": m["content"] if isinstance(m["content"], str) else "Why?"} for m in messages]
        assert prompter(messages) == tokenizer.apply_chat_template(flat, tokenize=False, add_generation_prompt=True)


def test_distilled_student_gets_its_own_format(distilled_dir):
    directory, meta = distilled_dir
    prompter = ChatPrompter(directory, meta)  # auto: scotd.json has a student section
    assert prompter.format == "student" and prompter.default_stop == formats.STOP_STRINGS
    question = formats.student_input("Where do you keep milk?", [("a", "fridge"), ("b", "oven")])
    assert prompter([{"role": "system", "content": "ignored"}, {"role": "user", "content": question}]) == question
    assert prompter([{"role": "user", "content": " Why is the sky blue? "}]) == open_question_input("Why is the sky blue?")
    # the last user message is the question
    assert prompter(CONVERSATIONS[1]) == open_question_input("Why?")
    # asked for explicitly, the template is still there
    assert ChatPrompter(directory, meta, "template").format == "template"


def test_refusals_name_the_field(onnx_student_int4_dir, distilled_dir, tmp_path):
    meta = json.loads((onnx_student_int4_dir / "scotd.json").read_text())
    template = ChatPrompter(onnx_student_int4_dir, meta)
    student = ChatPrompter(*distilled_dir)
    cases = [
        (template, [], "messages: expected a non-empty list"),
        (template, ["hi"], "messages[0]: expected an object"),
        (template, [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}], "messages[1].role: 'bot'"),
        (template, [{"role": "user"}], "messages[0].content: missing"),
        (template, [{"role": "user", "content": 3}], "messages[0].content: expected a string"),
        (template, [{"role": "user", "content": [{"type": "image_url"}]}], "messages[0].content[0]"),
        (student, [{"role": "system", "content": "only a system turn"}], "needs a user message"),
        (student, [{"role": "user", "content": "  "}], "messages[0].content: empty question"),
    ]
    for prompter, messages, words in cases:
        with pytest.raises(ChatPromptError, match=words.replace("[", r"\[").replace("]", r"\]")):
            prompter(messages)
    # a template's own raise_exception becomes a ChatPromptError, not a server error
    (tmp_path / "strict").mkdir()
    strict = tmp_path / "strict"
    (strict / "chat_template.jinja").write_text(
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first turn must be the user') }}{% endif %}"
        "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    prompter = ChatPrompter(strict, {}, "template")
    assert prompter([{"role": "user", "content": "hi"}]) == "hi"
    with pytest.raises(ChatPromptError, match="first turn must be the user"):
        prompter([{"role": "assistant", "content": "x"}, {"role": "user", "content": "hi"}])
    # no template anywhere: auto falls back to the student format, and `template` is refused up front
    (tmp_path / "bare").mkdir()
    assert ChatPrompter(tmp_path / "bare", {}).format == "student"
    with pytest.raises(ValueError, match="has no chat template"):
        ChatPrompter(tmp_path / "bare", {}, "template")
    with pytest.raises(ValueError, match="chat format must be one of"):
        ChatPrompter(tmp_path / "bare", {}, "jinja")


def test_template_from_tokenizer_config(tmp_path):
    """Older exports keep the template in tokenizer_config.json (a string, or named templates)."""
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "eos_token": {"content": "</s>"},
        "chat_template": [{"name": "tool_use", "template": "T"},
                          {"name": "default", "template": "{% for m in messages %}{{ m['content'] }}{{ eos_token }}"
                                                          "{% endfor %}"}],
    }))
    prompter = ChatPrompter(tmp_path, {}, "auto")
    assert prompter.format == "template"
    assert prompter([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]) == "a</s>b</s>"
