"""The base of every configuration section: strict, documented, typed.

Each driver, backend and model defines its settings as a subclass of
`Settings` next to its implementation; `appliance.config` composes them. A
`type:` field (a `Literal`) picks the implementation of a section.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Settings(BaseModel):
    """Unknown keys are errors (`extra="forbid"`); values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)
