"""Where things are: the Triton model repository and the deployment's code directory.

AzureML keeps a deployment's two halves apart, and so do we:

- the **model repository** is a registered model asset. The AzureML-Triton image registers a
  folder that contains ``triton/`` and mounts it under ``$AZUREML_MODEL_DIR``; we look for it
  the same way, so a deployment needs no path;
- the **code directory** is ``code_configuration.code``: the entry script (``score.py``) and
  the processors. AzureML uploads it and sets ``AML_APP_ROOT`` and ``AZUREML_ENTRY_SCRIPT``
  (relative to ``AML_APP_ROOT``); in this template it is the ``score/`` folder.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_REPOSITORY = Path("models") / "triton"
#: The template's code directory, relative to the working directory.
DEFAULT_CODE_DIRECTORY = Path("score")


def find_model_repository(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Return the model repository to serve.

    Order: ``explicit``, ``$SCORE_MODEL_REPOSITORY``, the shallowest folder named ``triton``
    under ``$AZUREML_MODEL_DIR``, then ``./models/triton``.

    :raises FileNotFoundError: naming every place that was tried.
    """
    tried = []
    from triton_score.settings import ProcessSettings  # settings imports this module

    process = ProcessSettings.from_env()
    candidate = explicit or process.model_repository
    if candidate:
        path = Path(candidate)
        if path.is_dir():
            return path
        raise FileNotFoundError(f"model repository {str(path)!r} is not a directory")
    model_dir = process.azureml_model_dir
    if model_dir:
        root = Path(model_dir)
        if root.name == "triton" and root.is_dir():
            return root
        found = sorted(root.rglob("triton"), key=lambda p: (len(p.parts), str(p)))
        found = [p for p in found if p.is_dir()]
        if found:
            return found[0]
        tried.append(f"a 'triton' folder under $AZUREML_MODEL_DIR ({model_dir})")
    if DEFAULT_REPOSITORY.is_dir():
        return DEFAULT_REPOSITORY
    tried.append(f"./{DEFAULT_REPOSITORY}")
    raise FileNotFoundError(
        "no model repository found; tried " + ", ".join(tried) + " (use --models PATH)"
    )


def resolve_entry_script(script: str, app_root: str = "") -> str:
    """``AZUREML_ENTRY_SCRIPT`` as a path: relative to ``AML_APP_ROOT``, as azmlinfsrv reads it."""
    if not script:
        return ""
    path = Path(script.replace("/", os.sep))
    if not path.is_absolute() and app_root:
        path = Path(app_root) / path
    return str(path)


def find_code_directory(explicit: str = "", entry_script: str = "") -> Path | None:
    """The deployment's code directory, where processors are looked for first.

    Order: ``explicit`` (``SCORE_CODE_DIR``), the entry script's folder, then ``./score``
    when it holds a ``score.py`` (the template's layout) or a processor file (what
    ``score new`` writes there). ``None`` when there is none.
    """
    if explicit:
        return Path(explicit)
    if entry_script:
        return Path(entry_script).parent
    template = DEFAULT_CODE_DIRECTORY
    if (template / "score.py").is_file():
        return template
    from triton_score.processors.loading import code_directory_files

    if code_directory_files(template):
        return template
    return None


def split_address(url: str) -> tuple[str, int]:
    """``(host, port)`` of an address such as ``TRITON_URL`` (``host:port``, with or without
    ``http://``; no host means ``localhost``): the one place such an address is taken apart.

    :raises ValueError: no port, or a port that is not a number.
    """
    host, _, port = url.strip().removeprefix("http://").rstrip("/").rpartition(":")
    if not port.isdigit():
        raise ValueError(f"TRITON_URL must look like host:port, got {url!r}")
    return host or "localhost", int(port)


#: Host names that always mean this machine.
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]", "0.0.0.0", ""}


def is_local_address(host: str) -> bool:
    """Whether ``host`` (of ``TRITON_URL``) is this machine, so Triton's model repository is
    on our file system (a remote Triton's is not, even when a folder of the same name is)."""
    host = host.strip().lower()
    return host in LOCAL_HOSTS or host.startswith("127.")
