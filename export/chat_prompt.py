"""Chat messages -> the one prompt string the student completes (`POST /v1/chat/completions`).

A chat request can be turned into a prompt two ways, and which one fits depends on how the model was trained:

- `template`: the export's own chat template (`chat_template.jinja`, else `tokenizer_config.json`'s
  `chat_template`), rendered with jinja2 exactly as transformers' `apply_chat_template` renders it (sandboxed
  environment with `trim_blocks` and `lstrip_blocks`, `raise_exception`, `tojson`, `strftime_now`, the special
  tokens as variables, `add_generation_prompt=True`). Right for an instruction-tuned model that was never distilled
  (the embedded SmolLM2-135M-Instruct as shipped).
- `student`: the student format of `scotd_harness.formats`, built from the last user message. A distilled student
  was fine-tuned on "Q: ... A: {rationale} So the answer is: (x)" and nothing else; wrapped in a chat template it
  sees a prompt it was never trained on. A last user message that already is a student prompt (starts with "Q:",
  e.g. `formats.student_input(question, choices)`) is used as is; any other text becomes an open question.
- `auto` (the default): `student` when the export's `scotd.json` has a non-empty `student` section (the student
  was trained by `scotd train`, so it knows that format), else `template` when the export has one, else `student`.

Errors are `ChatPromptError`, whose message names the field (`messages[2].role`), fit for an HTTP 400.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from scotd_harness import formats

CHAT_FORMATS = ("auto", "template", "student")
#: roles a chat message may have (OpenAI's; "developer" is its newer name for "system")
ROLES = ("system", "developer", "user", "assistant", "tool")


class ChatPromptError(ValueError):
    """A chat request the prompt cannot be built from; the message names the offending field."""


def open_question_input(text: str) -> str:
    """The student prompt of a question without choices."""
    return formats.student_input(text, None)


def load_chat_template(export_dir: Path) -> str | None:
    """The export's chat template: `chat_template.jinja` (transformers >= 4.47 writes it), else the
    `chat_template` of `tokenizer_config.json` (a string, or a list of named templates: the one named
    "default"); None when it has none."""
    path = Path(export_dir) / "chat_template.jinja"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    config = _tokenizer_config(export_dir)
    template = config.get("chat_template")
    if isinstance(template, list):
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"),
                        None)
    return template if isinstance(template, str) and template.strip() else None


def _tokenizer_config(export_dir: Path) -> dict:
    path = Path(export_dir) / "tokenizer_config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _special_tokens(export_dir: Path) -> dict:
    """bos_token, eos_token, ... as strings, the variables transformers hands every chat template."""
    tokens: dict = {}
    sources = [_tokenizer_config(export_dir)]
    extra = Path(export_dir) / "special_tokens_map.json"
    if extra.is_file():
        sources.append(json.loads(extra.read_text(encoding="utf-8")))
    for source in sources:
        for key, value in source.items():
            if key.endswith("_token") and key not in tokens:
                value = value.get("content") if isinstance(value, dict) else value
                if isinstance(value, str):
                    tokens[key] = value
    tokens.setdefault("additional_special_tokens", [])
    return tokens


def _compile(template: str):
    """The template compiled in the environment transformers' `_compile_jinja_template` builds."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # transformers overrides jinja's own tojson, which escapes HTML characters
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def message_text(content, where: str) -> str:
    """A message's content as text: a string, or OpenAI's list of `{"type": "text", "text": ...}` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for k, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ChatPromptError(f"{where}.content[{k}]: only text parts ({{\"type\": \"text\", \"text\": ...}}) "
                                      "are supported")
            parts.append(part["text"])
        return "".join(parts)
    raise ChatPromptError(f"{where}.content: expected a string or a list of text parts")


def validate_messages(messages) -> list[dict]:
    """[{"role", "content"}] with every role known and every content text, or ChatPromptError naming the field."""
    if not isinstance(messages, list) or not messages:
        raise ChatPromptError("messages: expected a non-empty list of {\"role\", \"content\"} objects")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ChatPromptError(f"{where}: expected an object with role and content")
        role = message.get("role")
        if role not in ROLES:
            raise ChatPromptError(f"{where}.role: {role!r} is not one of {', '.join(ROLES)}")
        if "content" not in message or message["content"] is None:
            if role == "assistant":  # an assistant turn that only called tools has no content
                out.append({"role": role, "content": ""})
                continue
            raise ChatPromptError(f"{where}.content: missing")
        out.append({"role": role, "content": message_text(message["content"], where)})
    return out


class ChatPrompter:
    """Builds chat prompts for one export; `format` is the resolved choice ("template" or "student")."""

    def __init__(self, export_dir: str | Path, meta: dict, choice: str = "auto"):
        if choice not in CHAT_FORMATS:
            raise ValueError(f"chat format must be one of {', '.join(CHAT_FORMATS)}, not {choice!r}")
        self.template = load_chat_template(Path(export_dir))
        if choice == "template" and self.template is None:
            raise ValueError(f"--chat-format template: {export_dir} has no chat template "
                             "(chat_template.jinja or tokenizer_config.json's chat_template)")
        if choice == "auto":
            distilled = bool(meta.get("student"))
            choice = "student" if distilled or self.template is None else "template"
        self.format = choice
        self._compiled = _compile(self.template) if choice == "template" else None
        self._variables = _special_tokens(Path(export_dir)) if choice == "template" else {}

    @property
    def default_stop(self) -> tuple[str, ...]:
        """Stop strings when a request names none: the student format's own (a blank line or a new "Q:" ends an
        answer); a chat template's turn ends at end-of-sequence, which the runtime always stops at."""
        return formats.STOP_STRINGS if self.format == "student" else ()

    def __call__(self, messages) -> str:
        messages = validate_messages(messages)
        if self.format == "student":
            return self._student(messages)
        import jinja2

        try:
            return self._compiled.render(messages=messages, tools=None, documents=None, add_generation_prompt=True,
                                         **self._variables)
        except jinja2.exceptions.TemplateError as e:
            raise ChatPromptError(f"messages: the chat template refused them: {e}") from None

    @staticmethod
    def _student(messages: list[dict]) -> str:
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        if not users:
            raise ChatPromptError("messages: the student format needs a user message (the question)")
        text = messages[users[-1]]["content"].strip()
        if not text:
            raise ChatPromptError(f"messages[{users[-1]}].content: empty question")
        return text if text.startswith("Q:") else open_question_input(text)
