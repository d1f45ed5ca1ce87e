"""The language models a gateway serves through ``/v1``: tokenizer, template and adapter each.

A model is a language model when its folder holds a ``tokenizer.json``. The folder is
``SCORE_LLM_FOLDER/<model>`` when that setting is set (a gateway in front of a remote Triton
ships the tokenizer files of its models), else ``<model repository>/<model>``.
Each is loaded once per worker, on first use, and kept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from triton_score.errors import ScoringError
from triton_score.llm.adapters import Adapter, choose_adapter
from triton_score.llm.text import TOKENIZER_FILE, ModelText, ModelTextError
from triton_score.model.info import ModelInfo


@dataclass(frozen=True)
class LanguageModel:
    name: str
    text: ModelText
    adapter: Adapter
    #: Triton's metadata of the model (its inputs, for a gRPC request).
    info: ModelInfo


@dataclass
class LanguageModels:
    """Per app: ``model_info`` is Triton's metadata (raises ``ModelNotFound``)."""

    model_info: Callable[[str], ModelInfo]
    folder: Path | None
    declared: Mapping[str, str] = field(default_factory=dict)
    _loaded: dict[str, LanguageModel] = field(default_factory=dict)

    def names(self) -> list[str]:
        """The models ``/v1/models`` lists: folders with a tokenizer of models Triton serves."""
        if self.folder is None or not self.folder.is_dir():
            return []
        found = []
        for folder in sorted(self.folder.iterdir()):
            if not (folder / TOKENIZER_FILE).is_file():
                continue
            try:
                self.model_info(folder.name)
            except ScoringError:
                continue  # not served by this Triton (or not now)
            found.append(folder.name)
        return found

    def get(self, name: str) -> LanguageModel:
        """:raises ModelNotFound: Triton has no such model. :raises ModelTextError,
        AdapterError: it is not a language model the gateway can serve."""
        loaded = self._loaded.get(name)
        if loaded is not None:
            return loaded
        info = self.model_info(name)
        if self.folder is None:
            raise ModelTextError(f"model {name}'s folder is unknown: set SCORE_LLM_FOLDER")
        model = LanguageModel(
            name,
            ModelText.load(name, self.folder / name),
            choose_adapter(info, self.declared.get(name, "")),
            info,
        )
        self._loaded[name] = model
        return model
