"""Deprecated alias of :mod:`vicreg.probes` (the evaluation primitives), kept for one release.

``vicreg eval`` and ``vicreg embed`` now live in :mod:`vicreg.eval` and :mod:`vicreg.embed`; the retrieval math
that was ``vicreg.evaluate.neighbors`` is :mod:`vicreg.probes.retrieval`.
"""

import warnings

from vicreg.probes import *  # noqa: F403
from vicreg.probes import __all__ as __all__

warnings.warn(
    "vicreg.evaluate is renamed vicreg.probes; the old name goes away in the next release",
    DeprecationWarning,
    stacklevel=2,
)
