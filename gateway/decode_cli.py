"""Core of ``carewatch decode CHAR HEX [--mac MAC] [--key HEX]``: decode one frame, print one JSON object.

Exit status: 0 decoded; 1 the frame is truncated or malformed (reason on stderr); 2 bad arguments.
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

from carewatch.gateway.bthome import BTHomeDecoder
from carewatch.gateway.frames import FrameError
from carewatch.gateway.gatt import decode_characteristic, normalise_uuid
from carewatch.gateway.oximeters import FORMATS, decode_oximeter

#: Characteristics the CLI decodes (the others in gatt.DECODERS are configuration reads, not readings).
GATT_CHARS = ("2a5e", "2a5f", "2a1c", "2a35", "2a36", "2a37", "2a9d")
EXIT_OK, EXIT_BAD_FRAME, EXIT_USAGE = 0, 1, 2


def _parse_hex(text: str, what: str) -> bytes:
    cleaned = "".join(text.split()).replace(":", "").replace("-", "").lower().removeprefix("0x")
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        raise ValueError(f"{what} is not hex: {text!r}") from None


def run_decode(
    char: str,
    hex_payload: str,
    *,
    mac: str | None = None,
    key: str | None = None,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Decode ``hex_payload`` as ``char`` (a GATT UUID, ``bthome`` or an oximeter format) and print JSON."""
    name = char.strip().lower()
    try:
        data = _parse_hex(hex_payload, "HEX")
        bindkey = _parse_hex(key, "--key") if key else None
    except ValueError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
    if bindkey is not None and len(bindkey) != 16:
        print(f"error: --key must be 16 bytes (32 hex digits), got {len(bindkey)}", file=err)
        return EXIT_USAGE
    try:
        if name == "bthome":
            if mac is None:
                print("error: bthome needs --mac MAC (the nonce and the de-duplication state are per device)", file=err)
                return EXIT_USAGE
            decoder = BTHomeDecoder()
            try:
                decoder.set_bindkey(mac, bindkey)
            except ValueError as exc:
                print(f"error: --mac: {exc}", file=err)
                return EXIT_USAGE
            frame = decoder.decode(mac, data)
            doc = frame.to_json_dict(with_status=False)
        elif name in FORMATS:
            doc = decode_oximeter(name, data).to_json_dict()
        else:
            try:
                uuid = normalise_uuid(name)
            except FrameError:
                uuid = ""
            if uuid not in GATT_CHARS:
                known = ", ".join([*GATT_CHARS, "bthome", *sorted(FORMATS)])
                print(f"error: unknown characteristic {char!r} (known: {known})", file=err)
                return EXIT_USAGE
            doc = decode_characteristic(uuid, data).to_json_dict()
    except FrameError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_BAD_FRAME
    print(json.dumps(doc, ensure_ascii=False, default=str), file=out)
    return EXIT_OK
