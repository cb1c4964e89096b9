"""The ``facefix`` command line (Typer): options, help text, progress and exit codes over the library.

One module per group of commands, as rembg does: :mod:`facefix.cli.photos` (``invert``, ``edit``, ``align``),
:mod:`facefix.cli.manage` (``directions``, ``train``, ``weights``), over :mod:`facefix.cli.core`.

Each command parses its options and hands them to the library: :mod:`facefix.photo` edits a photo,
:mod:`facefix.batch` runs it over the inputs (outputs, groups, prefetch, report). This is the one place where errors
become lines on stderr and exit codes: 0 every input succeeded, 1 some inputs failed
(each reported, the others still written), 2 usage error, 3 internal error (a bug in facefix, not a bad input; the
run still reports every input), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM, handled like Ctrl-C: files being
written are removed, finished outputs stay). A :class:`FacefixError` is one line; any other exception is "internal
error ... rerun with --debug", and ``--debug`` shows the traceback.
"""

from facefix.cli import manage, photos  # noqa: F401 - importing them registers their commands on ``app``
from facefix.cli.core import app, main

__all__ = ["app", "main"]
