"""Token ids to text, incrementally, without ever sending half a character.

A byte-level tokenizer splits one character over several tokens (an emoji, a CJK character,
an accented letter in some vocabularies): decoding the ids seen so far mid-character ends in
U+FFFD, the replacement character. And decoding each token alone loses the spaces a
tokenizer puts back only between tokens. So :class:`IncrementalDetokenizer` decodes the ids of
the last piece sent (as context) twice, with and without the new ones, and sends the difference only
when it does not end in a replacement character: what is sent is always a prefix of the
decoding of all ids, whole characters only.

:class:`Utf8Pieces` does the same for text that arrives as bytes (an SSE body read as it comes:
a read may end inside a character).
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Any

REPLACEMENT = "\ufffd"


@dataclass
class IncrementalDetokenizer:
    """Feed ids as they come (:meth:`add`), get the text they complete."""

    tokenizer: Any  # tokenizers.Tokenizer
    ids: list[int] = field(default_factory=list)
    _prefix: int = 0  # ids[_prefix:_read] were decoded already, as context
    _read: int = 0

    def add(self, new_ids: list[int]) -> str:
        """The text the new ids complete ("" while a character is still incomplete)."""
        self.ids.extend(new_ids)
        before = self.tokenizer.decode(
            self.ids[self._prefix : self._read], skip_special_tokens=True
        )
        after = self._decode(self.ids[self._prefix :])
        if len(after) > len(before) and not after.endswith(REPLACEMENT):
            # The ids just sent become the context of the next ones.
            self._prefix, self._read = self._read, len(self.ids)
            return after[len(before) :]
        return ""

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def flush(self) -> str:
        """What is left at the end (a character that never completed shows as U+FFFD)."""
        before = self.tokenizer.decode(
            self.ids[self._prefix : self._read], skip_special_tokens=True
        )
        after = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return after[len(before) :]


@dataclass
class Utf8Pieces:
    """Bytes in, whole characters out: a character split over two reads is sent once whole."""

    _decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )

    def add(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)
