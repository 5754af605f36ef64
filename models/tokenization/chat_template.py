"""Chat templates: render a conversation with a checkpoint's Jinja template, as transformers does.

Why a faithful copy: instruct models only answer well on the exact prompt layout they were trained
with (role headers, bos/eos placement, whitespace). transformers 4.57.6 renders templates in a
sandboxed Jinja environment (`ImmutableSandboxedEnvironment`, `trim_blocks`, `lstrip_blocks`,
loop controls, a `{% generation %}` block tag), with its own `tojson` filter (no HTML escaping),
`raise_exception(message)` and `strftime_now(format)` globals, and the tokenizer's special tokens
(`bos_token`, `eos_token`, ... and extra special tokens) as template variables; every one of those
choices changes the rendered text, so each is mirrored here.

jinja2 is imported only when a template is rendered (it comes with torch, so it is installed
wherever rayformers runs, but tokenizing never needs it).
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping
from contextlib import contextmanager
from datetime import datetime

# transformers' marker appended to the final message for continue_final_message.
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "

_MISSING_TEMPLATE_HELP = (
    "Pass a template with `chat_template=` (a Jinja string, or the name of one of the checkpoint's templates), "
    "set `tokenizer.chat_template`, or put it in the checkpoint as chat_template.jinja (or as \"chat_template\" in "
    "tokenizer_config.json). Base (non-instruct) models usually have no chat template; use the instruct variant."
)


class ChatTemplateError(ValueError):
    """No chat template to render with: the checkpoint has none, or several and none was chosen."""


def select_chat_template(templates, chat_template: str | None, tools, name_or_path: str = "") -> str:
    """transformers' `get_chat_template`: which template string renders this call.

    `templates` is the tokenizer's own (`None`, a string, or a dict name -> template from a
    tokenizer_config.json list of `{name, template}` or from additional_chat_templates/*.jinja);
    `chat_template` is the call's argument: a template name of that dict, or a template string.
    """
    where = f" ({name_or_path})" if name_or_path else ""
    if isinstance(templates, Mapping):
        if chat_template is not None and chat_template in templates:
            return templates[chat_template]
        if chat_template is None:
            if tools is not None and "tool_use" in templates:
                return templates["tool_use"]
            if "default" in templates:
                return templates["default"]
            raise ChatTemplateError(
                f"This tokenizer{where} has several chat templates and none is named 'default'; pass "
                f"chat_template= with one of {sorted(templates)}."
            )
        return chat_template
    if chat_template is not None:
        return chat_template
    if templates is None:
        raise ChatTemplateError(f"This tokenizer{where} has no chat template. {_MISSING_TEMPLATE_HELP}")
    return templates


def render_conversations(conversations, chat_template: str, *, tools=None, documents=None,
                         add_generation_prompt: bool = False, continue_final_message: bool = False,
                         return_assistant_tokens_mask: bool = False, **template_kwargs):
    """transformers' `render_jinja_template`: (rendered texts, per-text character spans of `{% generation %}`)."""
    compiled = _compile(chat_template)
    tool_schemas = None
    if tools is not None:
        tool_schemas = []
        for index, tool in enumerate(tools):
            if not isinstance(tool, Mapping):
                raise TypeError(
                    f"tools[{index}] is a {type(tool).__name__}; pass each tool as its JSON schema (a dict). "
                    "Building schemas from Python functions (transformers' get_json_schema) is not supported."
                )
            tool_schemas.append(tool)
    if documents is not None:
        for document in documents:
            if not isinstance(document, Mapping):
                raise TypeError("Documents should be a list of dicts with 'title' and 'text' keys!")

    rendered, all_generation_indices = [], []
    for chat in conversations:
        if hasattr(chat, "messages"):
            chat = chat.messages
        final_message = None
        if continue_final_message:
            chat, final_message = _mark_final_message(chat)
        variables = dict(messages=chat, tools=tool_schemas, documents=documents,
                         add_generation_prompt=add_generation_prompt, **template_kwargs)
        # A template's raise_exception("...") reaches the caller as jinja2's TemplateError with that
        # message, as in transformers (templates use it to refuse e.g. a system role they lack).
        if return_assistant_tokens_mask:
            blocks, generation_indices = [], []
            with compiled.environment.activate_tracker(blocks, generation_indices):
                for block in compiled.generate(**variables):
                    blocks.append(block)
                text = "".join(blocks)
            all_generation_indices.append(generation_indices)
        else:
            text = compiled.render(**variables)
        if continue_final_message:
            text = _cut_after_final_message(text, final_message)
        rendered.append(text)
    return rendered, all_generation_indices


def _mark_final_message(chat):
    chat = copy.deepcopy(chat)
    final_message = chat[-1]["content"]
    if isinstance(final_message, (list, tuple)):
        for block in reversed(final_message):
            if "text" in block:
                final_message = block["text"]
                block["text"] = block["text"] + _CONTINUE_TAG
                break
        else:
            raise ValueError("continue_final_message is set but we could not find any text to continue in the final "
                             "message!")
    else:
        chat[-1]["content"] = chat[-1]["content"] + _CONTINUE_TAG
    return chat, final_message


def _cut_after_final_message(text: str, final_message: str) -> str:
    if final_message.strip() not in text or _CONTINUE_TAG.strip() not in text:
        raise ValueError(
            "continue_final_message is set but the final message does not appear in the chat after applying the chat "
            "template! This can happen if the chat template deletes portions of the final message. Please verify the "
            "chat template and final message in your chat to ensure they are compatible."
        )
    tag_location = text.rindex(_CONTINUE_TAG.strip())
    if text[tag_location:tag_location + len(_CONTINUE_TAG)] == _CONTINUE_TAG:
        return text[:tag_location]
    return text[:tag_location].rstrip()


@functools.lru_cache(maxsize=64)
def _compile(chat_template: str):
    """Compile once per template string, in transformers' environment."""
    try:
        import jinja2
        from jinja2.ext import Extension, loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as err:  # pragma: no cover - jinja2 ships with torch
        raise ImportError("Chat templates need jinja2>=3.1 (it comes with torch): `pip install jinja2`.") from err

    class AssistantTracker(Extension):
        """`{% generation %}...{% endgeneration %}`: records where assistant text lands (for assistant masks)."""

        tags = {"generation"}

        def __init__(self, environment):
            super().__init__(environment)
            environment.extend(activate_tracker=self.activate_tracker)
            self._rendered_blocks = None
            self._generation_indices = None

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_generation_support"), [], [], body).set_lineno(lineno)

        @jinja2.pass_eval_context
        def _generation_support(self, context, caller):
            rendered = caller()
            if self.is_active():
                start = len("".join(self._rendered_blocks))
                self._generation_indices.append((start, start + len(rendered)))
            return rendered

        def is_active(self) -> bool:
            return self._rendered_blocks or self._generation_indices

        @contextmanager
        def activate_tracker(self, rendered_blocks, generation_indices):
            try:
                if self.is_active():
                    raise ValueError("AssistantTracker should not be reused before closed")
                self._rendered_blocks = rendered_blocks
                self._generation_indices = generation_indices
                yield
            finally:
                self._rendered_blocks = None
                self._generation_indices = None

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # transformers' filter: Jinja's own escapes HTML characters, which would change the prompt.
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[AssistantTracker, loopcontrols])
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = strftime_now
    return environment.from_string(chat_template)
