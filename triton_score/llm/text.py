"""A model's tokenizer and chat template, from the files a Hugging Face model folder carries.

Each model has its own: two models behind one Triton may tokenize differently and lay chat
messages out differently (ChatML, Llama's ``[INST]``...). From the model's folder:

* ``tokenizer.json``: the Hugging Face ``tokenizers`` file (required): counts prompt and
  completion tokens for ``usage``, and turns token ids into text
  (:mod:`~triton_score.llm.detokenize`);
* the chat template, first found of: ``chat_template.jinja`` (a file of its own, as recent
  Hugging Face folders have), ``tokenizer_config.json``'s ``chat_template`` (a string, or a
  list of ``{"name", "template"}`` of which ``default`` is taken). Without one the model
  serves ``/v1/completions`` only.

The template runs in Jinja2's immutable sandbox: a template is data shipped with a model, and
it must not reach Python objects beyond the messages it is given.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
TEMPLATE_FILE = "chat_template.jinja"


class ModelTextError(ValueError):
    """A model folder's tokenizer or template cannot be used; the message says which file."""


@dataclass(frozen=True)
class ModelText:
    """What turns messages into a prompt and text into token counts, for one model."""

    name: str
    tokenizer: Any  # tokenizers.Tokenizer (typed loosely: the package is an extra)
    template: Any = None  # a compiled jinja2 Template, or None: no chat
    special_tokens: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, name: str, folder: Path) -> ModelText:
        """Read ``folder``'s tokenizer and template.

        :raises ModelTextError: no ``tokenizer.json``, or a file that does not parse.
        """
        try:
            from jinja2 import TemplateError
            from jinja2.sandbox import ImmutableSandboxedEnvironment
            from tokenizers import Tokenizer
        except ImportError as exc:  # pragma: no cover - the llm extra is missing
            raise ModelTextError(
                "the OpenAI front needs the llm extra: pip install 'triton-score[llm]'"
            ) from exc
        path = folder / TOKENIZER_FILE
        if not path.is_file():
            raise ModelTextError(f"model {name} has no {TOKENIZER_FILE} in its folder")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:
            raise ModelTextError(f"{TOKENIZER_FILE} of model {name} does not load") from exc
        config = _read_config(name, folder / CONFIG_FILE)
        source = _template_source(folder, config)
        template = None
        if source is not None:
            environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            environment.globals["raise_exception"] = _raise_exception
            try:
                template = environment.from_string(source)
            except TemplateError as exc:
                raise ModelTextError(f"the chat template of model {name} does not compile") from exc
        special = {
            key: _token_text(config.get(key))
            for key in ("bos_token", "eos_token")
            if _token_text(config.get(key))
        }
        return cls(name, tokenizer, template, special)

    @property
    def has_chat(self) -> bool:
        return self.template is not None

    def chat_prompt(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The prompt for ``messages`` (each ``{"role", "content"}``), the assistant's turn open.

        :raises ModelTextError: no template, or the template refused the messages.
        """
        if self.template is None:
            raise ModelTextError(f"model {self.name} has no chat template")
        from jinja2 import TemplateError

        try:
            return str(
                self.template.render(
                    messages=list(messages), add_generation_prompt=True, **self.special_tokens
                )
            )
        except TemplateError as exc:
            raise ModelTextError(f"the chat template of model {self.name}: {exc}") from None

    def count(self, text: str) -> int:
        """How many tokens ``text`` is (``usage``), special tokens in it counted as such."""
        if not text:
            return 0
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)


def _raise_exception(message: str) -> None:
    """What Hugging Face templates call to refuse messages (e.g. roles out of order)."""
    from jinja2 import TemplateError

    raise TemplateError(message)


def _token_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return str(value["content"])  # the AddedToken form: {"content": "<s>", ...}
    return ""


def _read_config(name: str, path: Path) -> Mapping[str, Any]:
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelTextError(f"{CONFIG_FILE} of model {name} is not JSON") from exc
    if not isinstance(config, Mapping):
        raise ModelTextError(f"{CONFIG_FILE} of model {name} is not a JSON object")
    return config


def _template_source(folder: Path, config: Mapping[str, Any]) -> str | None:
    own_file = folder / TEMPLATE_FILE
    if own_file.is_file():
        return own_file.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, str):
        return template
    if isinstance(template, list):  # named templates: the default one
        for entry in template:
            if isinstance(entry, Mapping) and entry.get("name") == "default":
                return str(entry.get("template", ""))
    return None
