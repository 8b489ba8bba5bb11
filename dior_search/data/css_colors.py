"""Colour names of the `synthetic_cars` labels, derived from HSV as the reference code does.

The reference evaluation (`utils.hsv_to_color_name` in the paper's repository) turns a table
row's hue, saturation and value (each 0..1) into a name: the hue is shifted by half a turn, the
saturation and value halved, the colour converted to RGB (`colorsys`) and each channel
truncated to an integer 0..255; then the CSS 3 name of exactly that RGB triplet, or else the
CSS 2.1 name nearest to it (squared RGB distance). It looks names up with `webcolors` 1.5 (its
pinned version), whose hex-to-name maps are built by reversing the name-to-hex tables: where
two names share a triplet the later name in the table wins (`grey`, `darkgrey`, `cyan`,
`magenta`, ...), and where two CSS 2.1 colours are equally near the later one wins. This module
follows those rules with the tables below, shipped as data (no dependency on webcolors).

The tables are the named colours of the W3C specifications, in webcolors 1.5's order:
CSS Color Module Level 3, section 4.3 "Extended color keywords" (the SVG 1.1 colour keywords,
https://www.w3.org/TR/css-color-3/#svg-color), and CSS 2.1, section 4.3.6 (the 16 HTML 4
colours and orange, https://www.w3.org/TR/CSS21/syndata.html#color-units).
"""

from __future__ import annotations

import colorsys

RGB = tuple[int, int, int]

# CSS 3 / SVG 1.1 colour keywords (147 names, 138 distinct triplets), in webcolors 1.5's order.
CSS3_COLORS: dict[str, RGB] = {
    "aliceblue": (240, 248, 255), "antiquewhite": (250, 235, 215), "aqua": (0, 255, 255),
    "aquamarine": (127, 255, 212), "azure": (240, 255, 255), "beige": (245, 245, 220),
    "bisque": (255, 228, 196), "black": (0, 0, 0), "blanchedalmond": (255, 235, 205),
    "blue": (0, 0, 255), "blueviolet": (138, 43, 226), "brown": (165, 42, 42),
    "burlywood": (222, 184, 135), "cadetblue": (95, 158, 160), "chartreuse": (127, 255, 0),
    "chocolate": (210, 105, 30), "coral": (255, 127, 80), "cornflowerblue": (100, 149, 237),
    "cornsilk": (255, 248, 220), "crimson": (220, 20, 60), "cyan": (0, 255, 255),
    "darkblue": (0, 0, 139), "darkcyan": (0, 139, 139), "darkgoldenrod": (184, 134, 11),
    "darkgray": (169, 169, 169), "darkgrey": (169, 169, 169), "darkgreen": (0, 100, 0),
    "darkkhaki": (189, 183, 107), "darkmagenta": (139, 0, 139), "darkolivegreen": (85, 107, 47),
    "darkorange": (255, 140, 0), "darkorchid": (153, 50, 204), "darkred": (139, 0, 0),
    "darksalmon": (233, 150, 122), "darkseagreen": (143, 188, 143), "darkslateblue": (72, 61, 139),
    "darkslategray": (47, 79, 79), "darkslategrey": (47, 79, 79), "darkturquoise": (0, 206, 209),
    "darkviolet": (148, 0, 211), "deeppink": (255, 20, 147), "deepskyblue": (0, 191, 255),
    "dimgray": (105, 105, 105), "dimgrey": (105, 105, 105), "dodgerblue": (30, 144, 255),
    "firebrick": (178, 34, 34), "floralwhite": (255, 250, 240), "forestgreen": (34, 139, 34),
    "fuchsia": (255, 0, 255), "gainsboro": (220, 220, 220), "ghostwhite": (248, 248, 255),
    "gold": (255, 215, 0), "goldenrod": (218, 165, 32), "gray": (128, 128, 128),
    "grey": (128, 128, 128), "green": (0, 128, 0), "greenyellow": (173, 255, 47),
    "honeydew": (240, 255, 240), "hotpink": (255, 105, 180), "indianred": (205, 92, 92),
    "indigo": (75, 0, 130), "ivory": (255, 255, 240), "khaki": (240, 230, 140),
    "lavender": (230, 230, 250), "lavenderblush": (255, 240, 245), "lawngreen": (124, 252, 0),
    "lemonchiffon": (255, 250, 205), "lightblue": (173, 216, 230), "lightcoral": (240, 128, 128),
    "lightcyan": (224, 255, 255), "lightgoldenrodyellow": (250, 250, 210),
    "lightgray": (211, 211, 211), "lightgrey": (211, 211, 211), "lightgreen": (144, 238, 144),
    "lightpink": (255, 182, 193), "lightsalmon": (255, 160, 122), "lightseagreen": (32, 178, 170),
    "lightskyblue": (135, 206, 250), "lightslategray": (119, 136, 153),
    "lightslategrey": (119, 136, 153), "lightsteelblue": (176, 196, 222),
    "lightyellow": (255, 255, 224), "lime": (0, 255, 0), "limegreen": (50, 205, 50),
    "linen": (250, 240, 230), "magenta": (255, 0, 255), "maroon": (128, 0, 0),
    "mediumaquamarine": (102, 205, 170), "mediumblue": (0, 0, 205), "mediumorchid": (186, 85, 211),
    "mediumpurple": (147, 112, 219), "mediumseagreen": (60, 179, 113),
    "mediumslateblue": (123, 104, 238), "mediumspringgreen": (0, 250, 154),
    "mediumturquoise": (72, 209, 204), "mediumvioletred": (199, 21, 133),
    "midnightblue": (25, 25, 112), "mintcream": (245, 255, 250), "mistyrose": (255, 228, 225),
    "moccasin": (255, 228, 181), "navajowhite": (255, 222, 173), "navy": (0, 0, 128),
    "oldlace": (253, 245, 230), "olive": (128, 128, 0), "olivedrab": (107, 142, 35),
    "orange": (255, 165, 0), "orangered": (255, 69, 0), "orchid": (218, 112, 214),
    "palegoldenrod": (238, 232, 170), "palegreen": (152, 251, 152),
    "paleturquoise": (175, 238, 238), "palevioletred": (219, 112, 147),
    "papayawhip": (255, 239, 213), "peachpuff": (255, 218, 185), "peru": (205, 133, 63),
    "pink": (255, 192, 203), "plum": (221, 160, 221), "powderblue": (176, 224, 230),
    "purple": (128, 0, 128), "red": (255, 0, 0), "rosybrown": (188, 143, 143),
    "royalblue": (65, 105, 225), "saddlebrown": (139, 69, 19), "salmon": (250, 128, 114),
    "sandybrown": (244, 164, 96), "seagreen": (46, 139, 87), "seashell": (255, 245, 238),
    "sienna": (160, 82, 45), "silver": (192, 192, 192), "skyblue": (135, 206, 235),
    "slateblue": (106, 90, 205), "slategray": (112, 128, 144), "slategrey": (112, 128, 144),
    "snow": (255, 250, 250), "springgreen": (0, 255, 127), "steelblue": (70, 130, 180),
    "tan": (210, 180, 140), "teal": (0, 128, 128), "thistle": (216, 191, 216),
    "tomato": (255, 99, 71), "turquoise": (64, 224, 208), "violet": (238, 130, 238),
    "wheat": (245, 222, 179), "white": (255, 255, 255), "whitesmoke": (245, 245, 245),
    "yellow": (255, 255, 0), "yellowgreen": (154, 205, 50),
}  # fmt: skip
# CSS 2.1 colour keywords, in webcolors 1.5's order (HTML 4's sixteen, then orange).
CSS21_COLORS: dict[str, RGB] = {
    "aqua": (0, 255, 255), "black": (0, 0, 0), "blue": (0, 0, 255), "fuchsia": (255, 0, 255),
    "green": (0, 128, 0), "gray": (128, 128, 128), "lime": (0, 255, 0), "maroon": (128, 0, 0),
    "navy": (0, 0, 128), "olive": (128, 128, 0), "purple": (128, 0, 128), "red": (255, 0, 0),
    "silver": (192, 192, 192), "teal": (0, 128, 128), "white": (255, 255, 255),
    "yellow": (255, 255, 0), "orange": (255, 165, 0),

}  # fmt: skip


def reversed_names(names: dict[str, RGB]) -> dict[RGB, str]:
    """Triplet -> name, the later name winning where two share a triplet (as webcolors 1.5)."""
    return {rgb: name for name, rgb in names.items()}


CSS3_BY_RGB = reversed_names(CSS3_COLORS)


def hsv_to_rgb(hue: float, saturation: float, value: float) -> RGB:
    """The reference's triplet: hue + 0.5 (mod 1), saturation and value halved, each channel
    255 x (0..1) truncated toward zero."""
    channels = colorsys.hsv_to_rgb((hue + 0.5) % 1, 0.5 * saturation, 0.5 * value)
    red, green, blue = (int(255 * channel) for channel in channels)
    return red, green, blue


def nearest_css21(rgb: RGB) -> str:
    """The CSS 2.1 name nearest to `rgb` (squared distance); a tie goes to the later name."""
    best, best_distance = "", -1
    for name, (red, green, blue) in CSS21_COLORS.items():
        distance = (red - rgb[0]) ** 2 + (green - rgb[1]) ** 2 + (blue - rgb[2]) ** 2
        if best_distance < 0 or distance <= best_distance:
            best, best_distance = name, distance
    return best


def rgb_color_name(rgb: RGB) -> str:
    """The CSS 3 name of exactly `rgb`, or else the nearest CSS 2.1 name."""
    return CSS3_BY_RGB.get(rgb) or nearest_css21(rgb)


def hsv_color_name(hue: float, saturation: float, value: float) -> str:
    """A `synthetic_cars` colour label from a table row's HSV columns, as the reference makes it."""
    return rgb_color_name(hsv_to_rgb(hue, saturation, value))
