"""The contract every frame decoder keeps under fuzzing: it decodes, or it refuses with a FrameError that says why."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from carewatch.gateway.frames import DecodedFrame, FrameError


def decoded_or_refused(decode: Callable[[], DecodedFrame], error_prefix: str = "",
                       json_default: Callable[[Any], Any] | None = None) -> DecodedFrame | None:
    """Run `decode`: a FrameError must carry a message (starting with `error_prefix`) and gives None; any other
    exception escapes; a decoded frame must serialise to JSON (with `json_default`) and is returned."""
    try:
        frame = decode()
    except FrameError as exc:
        assert str(exc) and str(exc).startswith(error_prefix)
        return None
    json.dumps(frame.to_json_dict(), default=json_default)
    return frame
