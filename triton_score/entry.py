"""``triton_score.entry``: the documented path of :mod:`triton_score.azureml.entry`
(what an AzureML deployment names as its scoring script).

The module lives in its layer's folder; this name stays because users, configs and images
name it. Importing it gives that very module (one module, one set of globals), not a copy.
"""

import sys

from triton_score.azureml import entry as _moved

if __name__ == "__main__":  # python -m triton_score.entry
    sys.exit(_moved.main())
sys.modules[__name__] = _moved
