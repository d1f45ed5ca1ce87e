"""``triton_score.nltk_data``: the documented path of :mod:`triton_score.kit.nltk_data`
(processors import its helpers).

The module lives in its layer's folder; this name stays because users, configs and images
name it. Importing it gives that very module (one module, one set of globals), not a copy.
"""

import sys

from triton_score.kit import nltk_data as _moved

if __name__ == "__main__":  # python -m triton_score.nltk_data
    sys.exit(_moved.main())
sys.modules[__name__] = _moved
