"""Files sent to a ComfyUI server: the multipart form of ``POST /upload/image``, which ComfyUI's own
frontend uses for every upload (images, and audio and video files too: the server saves any file
into its input folder, where LoadImage, LoadAudio and VideoHelperSuite's VHS_LoadVideo read them).

A file's name on the server is made from its digest (``farm-<sha256>.png|.wav|.mp4``), never from
user text, so equal files share one upload and nothing a script says reaches a path.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Mapping
from pathlib import Path

from PIL import Image

from workers.api import StageError

IMAGE_TYPES = {"PNG": (".png", "image/png"), "JPEG": (".jpg", "image/jpeg"), "WEBP": (".webp", "image/webp")}


def multipart(fields: Mapping[str, str], file_field: str, filename: str, data: bytes, mime: str) -> tuple[bytes, str]:
    """A multipart/form-data body with ``fields`` and one file; and its Content-Type."""
    boundary = f"farm{uuid.uuid4().hex}"
    out = io.BytesIO()
    for key, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    out.write(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{filename}"\r\n'
        f"Content-Type: {mime}\r\n\r\n".encode()
    )
    out.write(data)
    out.write(f"\r\n--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def prepared(what: str, input_name: str, path: Path) -> tuple[str, bytes, str]:
    """(server file name, bytes, MIME type) of the local file for template input ``input_name``:
    ``video`` is the shot's MP4, ``audio`` and ``speakerN`` WAVs, anything else an image (PNG, JPEG
    and WebP as they are, other formats converted to PNG)."""
    data = Path(path).read_bytes()
    if input_name == "video":
        ext, mime = ".mp4", "video/mp4"
    elif input_name == "audio" or input_name.startswith("speaker"):
        if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
            raise StageError(f"{what}: the {input_name} track is not a WAV file", retryable=False)
        ext, mime = ".wav", "audio/wav"
    else:
        try:
            with Image.open(io.BytesIO(data)) as im:
                fmt = im.format
                if fmt not in IMAGE_TYPES:
                    buf = io.BytesIO()
                    im.save(buf, "PNG")
                    data, fmt = buf.getvalue(), "PNG"
        except OSError as exc:
            raise StageError(f"{what}: input for {input_name} is not a readable image: {exc}") from None
        ext, mime = IMAGE_TYPES[str(fmt)]
    return f"farm-{hashlib.sha256(data).hexdigest()[:40]}{ext}", data, mime
