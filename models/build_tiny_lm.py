#!/usr/bin/env python3
"""Build the tokenizer files of the ``tiny_lm`` example model, offline and deterministically.

    python models/build_tiny_lm.py [--out models/triton] [--force]

``tiny_lm`` itself (``models/triton/tiny_lm/1/model.py``, a toy word-level bigram model with
the vLLM backend's interface) is committed source and needs no build: Triton serves it with or
without these files. What this builder writes is what the *gateway* reads to put a language
model behind OpenAI's API (``triton_score.llm``), the two files a Hugging Face model folder
carries and that a real vLLM or TensorRT-LLM model folder is given in the same place:

* ``tiny_lm/tokenizer.json``: a word-level tokenizer trained with the ``tokenizers`` library
  on the text the model learnt from (the Python standard library's ``pydoc_data.topics``), with
  the model's own pre-tokenization (``\\w+|[^\\w\\s]+``, the library's ``Whitespace``), so one
  generated word is one token, and the usage counts the gateway reports are the model's steps;
* ``tiny_lm/tokenizer_config.json``: the special tokens and a ``chat_template`` (Jinja2, the
  ChatML layout: ``<|im_start|>role\\n...<|im_end|>``), which the gateway renders for
  ``/v1/chat/completions``.

Nothing is downloaded. The same inputs (the text, :data:`BUILD_VERSION`, the ``tokenizers``
version) give byte-identical files, and the build returns at once when its stamp
(``tiny_lm/.build-stamp.json``) shows them unchanged. Without the ``tokenizers`` package
(the ``llm`` extra) it raises ``ImportError``: ``score serve`` says so and serves the models,
and the OpenAI front answers that ``tiny_lm`` has no tokenizer.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

#: Bump when anything that changes the generated files changes.
BUILD_VERSION = "1"
MODEL_NAME = "tiny_lm"
DEFAULT_OUT = Path(__file__).resolve().parent / "triton"
UNKNOWN = "[UNK]"
END_OF_TEXT = "<|endoftext|>"
SPECIAL_TOKENS = [UNKNOWN, END_OF_TEXT, "<|im_start|>", "<|im_end|>"]
#: The ChatML layout: each message between <|im_start|>role and <|im_end|>, then the
#: assistant's turn opened when the caller asks for a generation prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
STAMP = ".build-stamp.json"
OUTPUTS = ("tokenizer.json", "tokenizer_config.json")


def training_text() -> str:
    """The English text tiny_lm learns from (the same as ``model.py``'s ``from_stdlib``)."""
    from pydoc_data.topics import topics

    return "\n".join(topics[key] for key in sorted(topics))


def tokenizer_json(text: str) -> str:
    """``tokenizer.json`` for ``text``: a WordLevel model over the Whitespace pre-tokenizer."""
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError as exc:
        raise ImportError(
            "tiny_lm's tokenizer needs the tokenizers package: "
            "pip install -c constraints.txt -e '.[llm]'"
        ) from exc
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNKNOWN))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with " "
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, min_frequency=1)
    tokenizer.train_from_iterator(text.splitlines(), trainer=trainer)
    # sort_keys: the vocabulary comes out of a hash map; sorted, the file is reproducible.
    return json.dumps(json.loads(tokenizer.to_str()), indent=1, sort_keys=True, ensure_ascii=False)


def tokenizer_config_json() -> str:
    config = {
        "bos_token": None,
        "eos_token": END_OF_TEXT,
        "unk_token": UNKNOWN,
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": 4096,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    return json.dumps(config, indent=1, sort_keys=True)


def _stamp(text: str) -> dict[str, str]:
    import tokenizers

    return {
        "build_version": BUILD_VERSION,
        "text_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "tokenizers": tokenizers.__version__,
    }


def _write(path: Path, content: str) -> None:
    """Atomically: a reader (a gateway starting) never sees half a file."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    os.chmod(temporary, 0o644)  # tempfile makes it 0600; Triton and the gateway read it
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(content)
    os.replace(temporary, path)


def build(
    repository: str | Path = DEFAULT_OUT,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Write ``tiny_lm``'s tokenizer files into ``repository/tiny_lm`` (a model builder)."""
    folder = Path(repository) / MODEL_NAME
    if not (folder / "config.pbtxt").is_file():
        return folder  # a repository without tiny_lm (a copy of some models only)
    text = training_text()
    tokenizer = tokenizer_json(text)  # raises ImportError first, before anything is written
    stamp = _stamp(text)
    stamp["outputs"] = hashlib.sha256((tokenizer + tokenizer_config_json()).encode()).hexdigest()
    stamp_path = folder / STAMP
    if not force and all((folder / name).is_file() for name in OUTPUTS):
        try:
            current = json.loads(stamp_path.read_text())
        except (OSError, ValueError):
            current = None
        written = hashlib.sha256(
            "".join((folder / name).read_text(encoding="utf-8") for name in OUTPUTS).encode()
        ).hexdigest()
        if current == stamp and written == stamp["outputs"]:
            return folder
    _write(folder / "tokenizer.json", tokenizer)
    _write(folder / "tokenizer_config.json", tokenizer_config_json())
    _write(stamp_path, json.dumps(stamp, indent=1, sort_keys=True))
    words = len(json.loads(tokenizer)["model"]["vocab"])
    log(f"build: {MODEL_NAME} tokenizer written ({words} words)")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the model repository")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    options = parser.parse_args(argv)
    build(options.out, force=options.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
