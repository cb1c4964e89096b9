"""The facefix exception hierarchy, nothing else.

``str(e)`` of every :class:`FacefixError` is the one line a user sees: what went wrong, where, and what to try.
The library raises and never prints or exits; ``facefix.cli`` turns these into a line on stderr and an exit code.
"""


class FacefixError(Exception):
    """Base class: any error a user can cause or fix. ``str(e)`` is a single line."""


class InputError(FacefixError):
    """A bad input: unreadable or unsupported image, bad edit spec, wrong tensor file."""


class NoFaceError(InputError):
    """No face was detected in a photo (or not the one asked for with ``--face N``)."""


class WeightsError(FacefixError):
    """A checkpoint problem: missing while offline, sha256 mismatch, wrong or truncated file, unexpected keys."""


class UsageError(FacefixError):
    """Options that contradict each other or an unsupported configuration (exit code 2)."""
