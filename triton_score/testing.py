"""``triton_score.testing``: the documented path of :mod:`triton_score.kit.testing`
(``pytest_plugins = ["triton_score.testing"]`` in the tests ``score new`` writes).

The module lives in its layer's folder; this name stays because users, configs and images
name it. Importing it gives that very module (one module, one set of globals), not a copy.
"""

import sys

from triton_score.kit import testing as _moved

sys.modules[__name__] = _moved
