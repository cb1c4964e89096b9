"""Choices shared by the library and the command line, as str-valued Enums (no heavy imports).

Each choice is written once here: the library validates against it, and ``facefix --help`` and shell completion
list its values. A member equals its value (``MaskMode.face == "face"``) and prints as it, so plain strings work
wherever a choice is taken.
"""

from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """A str-valued choice: equal to its value, and formatted as it (``f"{MaskMode.face}"`` is ``face``)."""

    # Python 3.11 formats mixed-in Enums as ``MaskMode.face``; keep the plain value everywhere.
    __str__ = str.__str__
    __format__ = str.__format__

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """The choices in declaration order, as plain strings."""
        return tuple(m.value for m in cls)


class MaskMode(Choice):
    """How out-of-domain regions (background, hair, accessories) are found and kept from the input."""

    auto = "auto"    # samm with SAMM weights, else face (photos) or error (aligned crops)
    samm = "samm"    # SAMM's invertibility mask (needs SAMM weights)
    error = "error"  # smoothed reconstruction error of the unedited inversion
    face = "face"    # everything outside a feathered landmark face hull
    none = "none"    # pure GAN output


class MaskFrom(Choice):
    """Which pass the SAMM flow and mask come from."""

    edited = "edited"      # recomputed on each edited pass (as the paper)
    original = "original"  # the unedited inversion's, reused for every edit


class EncoderType(Choice):
    """Which encoder inverts the faces."""

    e4e = "e4e"
    restyle = "restyle"
