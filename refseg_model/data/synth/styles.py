"""The look of each style (pure data): object colours, ground types, which compact categories appear and how
often, placement order and road markings. Colour words in expressions are the keys of `PALETTES`."""
from __future__ import annotations

from typing import Dict, Tuple

RGB = Tuple[int, int, int]

# Object colours: style -> category -> colour name -> RGB. Colour words in expressions come from these keys.
PALETTES: Dict[str, Dict[str, Dict[str, RGB]]] = {
    "default": {
        "building": {"grey": (148, 148, 150), "red": (165, 58, 46), "white": (226, 226, 220),
                     "blue": (60, 90, 150), "brown": (112, 78, 50)},
        "vehicle": {"white": (238, 238, 238), "black": (28, 28, 32), "red": (196, 30, 30),
                    "blue": (36, 70, 180), "yellow": (230, 198, 36)},
        "storage tank": {"white": (232, 232, 226), "grey": (150, 152, 156)},
        "pond": {"blue": (46, 86, 140), "dark green": (30, 82, 64)},
        "court": {"green": (56, 132, 74), "blue": (46, 96, 170), "red": (168, 72, 52)},
        "road": {"grey": (108, 108, 110)},
        "field": {"green": (82, 140, 54), "yellow": (208, 186, 92), "brown": (138, 100, 64)},
    },
    "shifted": {
        "building": {"orange": (216, 118, 40), "purple": (118, 60, 142), "teal": (30, 128, 128),
                     "pink": (226, 140, 172)},
        "vehicle": {"orange": (240, 126, 28), "purple": (132, 58, 164), "teal": (28, 142, 142),
                    "silver": (194, 198, 204)},
        "storage tank": {"silver": (202, 204, 210), "teal": (36, 120, 124)},
        "solar panel": {"dark blue": (30, 44, 104), "black": (24, 26, 34)},
        "swimming pool": {"turquoise": (52, 196, 206), "light blue": (128, 184, 234)},
        "airplane": {"white": (240, 240, 240), "silver": (184, 190, 198), "orange": (230, 120, 36)},
        "road": {"dark grey": (62, 62, 68)},
        "field": {"purple": (138, 110, 172), "orange": (208, 140, 70), "olive": (118, 124, 58)},
    },
}
# Ground types: name -> (base RGB, tree/shrub RGB, (min, max) trees at size 128).
GROUNDS: Dict[str, Dict[str, Tuple[RGB, RGB, Tuple[int, int]]]] = {
    "default": {"grass": ((92, 118, 64), (38, 64, 34), (8, 30)), "meadow": ((118, 128, 76), (44, 70, 38), (4, 18)),
                "soil": ((148, 124, 92), (52, 74, 40), (0, 8)), "urban": ((128, 126, 120), (46, 72, 40), (0, 10))},
    "shifted": {"sand": ((208, 184, 140), (118, 112, 66), (0, 12)), "snow": ((226, 230, 236), (32, 50, 40), (6, 26)),
                "rock": ((150, 138, 124), (92, 86, 72), (0, 10))},
}
# Compact categories: style -> category -> (sampling weight, max per scene). Roads and fields are handled apart.
CATEGORIES: Dict[str, Dict[str, Tuple[float, int]]] = {
    "default": {"building": (3.0, 8), "vehicle": (3.0, 10), "storage tank": (2.0, 6), "pond": (1.0, 2),
                "court": (1.0, 2)},
    "shifted": {"building": (3.0, 8), "vehicle": (2.0, 8), "storage tank": (2.0, 6), "solar panel": (1.2, 3),
                "swimming pool": (1.2, 3), "airplane": (1.2, 3)},
}
PLACE_ORDER = {"pond": 0, "court": 0, "solar panel": 0, "swimming pool": 1, "airplane": 1, "building": 2,
                "storage tank": 3, "vehicle": 4}
ROAD_MARK: Dict[str, RGB] = {"default": (228, 228, 222), "shifted": (226, 192, 58)}
