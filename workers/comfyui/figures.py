"""A character's figure from a ComfyUI turnaround sheet, when no node of the workflow makes one."""

from __future__ import annotations

from PIL import Image, ImageChops, ImageStat

_KEY_LOW, _KEY_HIGH = 24, 64  # colour distance from the background: transparent below, opaque above


def key_out_background(image: Image.Image) -> tuple[Image.Image, bool]:
    """RGBA ``image`` with its background (the median colour of its border) made transparent and
    cropped to what is left; ``False`` when nothing stood out from the background (left opaque)."""
    rgb = image.convert("RGB")
    w, h = rgb.size
    strips = [
        rgb.crop((0, 0, w, 1)),
        rgb.crop((0, h - 1, w, h)),
        rgb.crop((0, 0, 1, h)).transpose(Image.Transpose.ROTATE_90),
        rgb.crop((w - 1, 0, w, h)).transpose(Image.Transpose.ROTATE_90),
    ]
    border = Image.new("RGB", (2 * w + 2 * h, 1))
    x = 0
    for strip in strips:
        border.paste(strip, (x, 0))
        x += strip.width
    bg = tuple(int(v) for v in ImageStat.Stat(border).median)
    r, g, b = ImageChops.difference(rgb, Image.new("RGB", rgb.size, bg)).split()
    distance = ImageChops.lighter(ImageChops.lighter(r, g), b)
    span = _KEY_HIGH - _KEY_LOW
    alpha = distance.point(lambda v: 0 if v <= _KEY_LOW else 255 if v >= _KEY_HIGH else (v - _KEY_LOW) * 255 // span)
    box = alpha.getbbox()
    out = rgb.convert("RGBA")
    if box is None:
        return out, False
    out.putalpha(alpha)
    return out.crop(box), True


def derive_figure(sheet: Image.Image) -> tuple[Image.Image, str]:
    """A character's figure from a turnaround sheet: the front view (the left third of a landscape
    sheet, where turnarounds put it; all of a portrait one) with its background keyed out."""
    w, h = sheet.size
    panel = sheet.crop((0, 0, max(1, w // 3), h)) if w > h * 1.1 else sheet
    figure, keyed = key_out_background(panel)
    how = "the left third of the sheet (the front view)" if panel is not sheet else "the whole sheet"
    note = (
        f"derived from the sheet: {how} with its background colour keyed out"
        if keyed
        else f"derived from the sheet: {how}, left opaque (nothing stood out from the background)"
    )
    return figure, note
