"""Where the Triton model repository is.

The AzureML-Triton image registers a model folder that contains ``triton/`` and mounts it
under ``$AZUREML_MODEL_DIR``; we look for it the same way, so a deployment needs no path.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_REPOSITORY = Path("models") / "triton"


def find_model_repository(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Return the model repository to serve.

    Order: ``explicit``, ``$SCORE_MODEL_REPOSITORY``, the shallowest folder named ``triton``
    under ``$AZUREML_MODEL_DIR``, then ``./models/triton``.

    :raises FileNotFoundError: naming every place that was tried.
    """
    tried = []
    candidate = explicit or os.environ.get("SCORE_MODEL_REPOSITORY")
    if candidate:
        path = Path(candidate)
        if path.is_dir():
            return path
        raise FileNotFoundError(f"model repository {str(path)!r} is not a directory")
    model_dir = os.environ.get("AZUREML_MODEL_DIR")
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
