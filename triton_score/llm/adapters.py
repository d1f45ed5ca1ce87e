"""A generation request in the inputs of the Triton LLM backend a model runs on.

The gateway speaks to language models through Triton's generate extension (a flat JSON object
of the model's inputs), always streaming (``generate_stream``, ``stream: true``): a client's
non-streaming request is the same stream, gathered. Two interfaces are common:

* **vLLM backend** (:class:`VllmAdapter`): ``text_input``, ``stream``,
  ``sampling_parameters`` (one JSON string: ``max_tokens``, ``temperature``, ``top_p``,
  ``seed``, ``stop``), ``exclude_input_in_output``; each response's ``text_output`` is the new
  text. ``tiny_lm`` has exactly this interface.
* **TensorRT-LLM** (:class:`TensorRtLlmAdapter`, its ``ensemble`` or ``tensorrt_llm_bls``
  model): ``text_input``, ``max_tokens``, ``stream`` and one input per sampling setting
  (``temperature``, ``top_p``, ``random_seed``), sent only when the model has it; each
  response's ``text_output`` is the new text. Stop sequences are not sent (its ``stop_words``
  are token lists): the gateway finds them (:mod:`~triton_score.llm.stops`) and ends the stream.

Which one applies is read from the model's metadata (:func:`choose_adapter`: an input named
``sampling_parameters`` is vLLM's; ``max_tokens`` is TensorRT-LLM's), or declared per model
with ``SCORE_LLM_ADAPTERS``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from triton_score.model.info import ModelInfo


@dataclass(frozen=True)
class Generation:
    """What to generate, in the gateway's terms (OpenAI's fields, checked)."""

    prompt: str
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()


class AdapterError(ValueError):
    """The model has no interface the gateway can drive; the message says why."""


class Adapter(Protocol):
    """One Triton LLM interface."""

    @property
    def name(self) -> str:
        """``vllm`` or ``tensorrt_llm`` (``SCORE_LLM_ADAPTERS``' words)."""
        ...

    def body(self, generation: Generation) -> dict[str, Any]:
        """The ``generate_stream`` request for ``generation``."""
        ...

    def text(self, event: Mapping[str, Any]) -> str:
        """The new text in one response of the stream."""
        ...


def _text_output(event: Mapping[str, Any]) -> str:
    value = event.get("text_output", "")
    if isinstance(value, list):  # a [-1]-shaped output comes as a list of strings
        return "".join(str(v) for v in value)
    return str(value)


@dataclass(frozen=True)
class VllmAdapter:
    """Triton's vLLM backend (and ``tiny_lm``)."""

    name: str = "vllm"

    def body(self, generation: Generation) -> dict[str, Any]:
        sampling: dict[str, Any] = {"max_tokens": generation.max_tokens}
        if generation.temperature is not None:
            sampling["temperature"] = generation.temperature
        if generation.top_p is not None:
            sampling["top_p"] = generation.top_p
        if generation.seed is not None:
            sampling["seed"] = generation.seed
        if generation.stop:
            sampling["stop"] = list(generation.stop)
        return {
            "text_input": generation.prompt,
            "stream": True,
            "exclude_input_in_output": True,
            "sampling_parameters": json.dumps(sampling),
        }

    def text(self, event: Mapping[str, Any]) -> str:
        return _text_output(event)


@dataclass(frozen=True)
class TensorRtLlmAdapter:
    """TensorRT-LLM's Triton models (``ensemble``, ``tensorrt_llm_bls``)."""

    inputs: frozenset[str] = frozenset()
    name: str = "tensorrt_llm"

    def body(self, generation: Generation) -> dict[str, Any]:
        body: dict[str, Any] = {
            "text_input": generation.prompt,
            "max_tokens": generation.max_tokens,
            "stream": True,
        }
        optional = {
            "temperature": generation.temperature,
            "top_p": generation.top_p,
            "random_seed": generation.seed,
        }
        for name, value in optional.items():
            if value is not None and name in self.inputs:
                body[name] = value
        return body

    def text(self, event: Mapping[str, Any]) -> str:
        return _text_output(event)


def choose_adapter(model: ModelInfo, declared: str = "") -> Adapter:
    """The adapter for ``model``: ``declared`` (``vllm``, ``tensorrt_llm``) or read from its inputs.

    :raises AdapterError: no ``text_input``, or inputs of neither interface.
    """
    names = frozenset(spec.name for spec in model.inputs)
    kind = declared
    if not kind:
        if "text_input" not in names:
            raise AdapterError(f"model {model.name} has no text_input: not a language model")
        if "sampling_parameters" in names:
            kind = "vllm"
        elif "max_tokens" in names:
            kind = "tensorrt_llm"
        else:
            raise AdapterError(
                f"model {model.name}'s inputs are neither the vLLM backend's nor TensorRT-LLM's: "
                "declare its adapter with SCORE_LLM_ADAPTERS"
            )
    if kind == "vllm":
        return VllmAdapter()
    if kind == "tensorrt_llm":
        return TensorRtLlmAdapter(names)
    raise AdapterError(f"unknown adapter {kind!r} for model {model.name}")
