"""sessions.web: an HTTP and Server-Sent Events API to the sessions of a running tree, and
a live dashboard of the tree, as one ASGI app (Starlette) served by Hypercorn on trio.

See docs/web.md. Install the ``web`` extra: ``pip install 'otpy[web]'``.
"""

from ._app import create_app as create_app
from ._app import new_token as new_token
from ._limits import WebLimits as WebLimits
from ._serve import serve as serve

# isort: split
from .._util import fixup_module_metadata as _fixup

_fixup(__name__, globals())
del _fixup
