"""Stop sequences, found even when one spans two chunks of a stream.

A model streams text in pieces (``" fo"``, ``"o b"``, ``"ar"``): a stop sequence ``"foo bar"``
is in none of them. :class:`StopScanner` keeps the text that could still begin a stop
sequence instead of sending it; the next piece either completes the sequence (the text before
it is sent, the sequence never is, and the stream stops) or shows it was not one (the held
text is sent). OpenAI's rule: the stop sequence itself is not part of the answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StopScanner:
    """Feed pieces of text (:meth:`add`); send what it returns; stop once :attr:`stopped`."""

    stops: tuple[str, ...] = ()
    stopped: bool = False
    _held: str = field(default="", repr=False)

    def add(self, piece: str) -> str:
        """What of the text so far may be sent now."""
        if self.stopped:
            return ""
        text = self._held + piece
        found = [index for index in (text.find(stop) for stop in self.stops) if index >= 0]
        if found:
            self.stopped = True
            self._held = ""
            return text[: min(found)]
        hold = self._longest_start(text)
        self._held = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold]

    def flush(self) -> str:
        """The end of the stream: what was held back was no stop sequence after all."""
        rest, self._held = self._held, ""
        return "" if self.stopped else rest

    def _longest_start(self, text: str) -> int:
        """The length of the longest end of ``text`` that begins some stop sequence."""
        longest = 0
        for stop in self.stops:
            for length in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:length]):
                    longest = length
                    break
        return longest
