"""How each style words an expression (pure data): nouns and their synonyms, templates per expression kind,
direction and relation words, frames ("segment {e}"), number words and irregular plurals."""
from __future__ import annotations

from typing import Dict

# Phrasing: style -> table. {the} is "the " or "" (default style only); {cnoun}/{cpl} include the colour word.
VOCAB: Dict[str, dict] = {
    "default": {
        "nouns": {"building": ["building", "house"], "vehicle": ["vehicle", "car"],
                  "storage tank": ["storage tank", "oil tank", "tank"], "pond": ["pond", "lake"],
                  "court": ["court", "sports court", "tennis court"], "road": ["road", "street"],
                  "field": ["field", "crop field"]},
        "the_prob": 0.75,
        "frames": ["{e}"],
        "templates": {
            "category": {"": ["{the}{noun}", "{the}{noun} in the image", "the only {noun}"]},
            "colour": {"": ["{the}{colour} {noun}", "{the}{noun} that is {colour}"]},
            "size": {"large": ["{the}largest {noun}", "{the}biggest {noun}"],
                     "small": ["{the}smallest {noun}", "{the}tiniest {noun}"],
                     "pair_large": ["{the}big {noun}", "{the}larger {noun}", "{the}bigger {noun}"],
                     "pair_small": ["{the}small {noun}", "{the}smaller {noun}"]},
            "position": {"region": ["{the}{noun} {pos}", "{the}{noun} located {pos}"],
                         "orient": ["{the}{orient} {noun}", "{the}{noun} running {orient_adv}"]},
            "relation": {"": ["{the}{noun} {rel} {anchor}", "{the}{noun} that is {rel} {anchor}"]},
            "multi": {"two": ["all {cpl}", "both {cpl}", "the two {cpl}", "every {cnoun}"],
                      "many": ["all {cpl}", "all the {cpl}", "every {cnoun}", "the {num} {cpl}"]},
        },
        "dirs": {"top": "top", "bottom": "bottom", "left": "left", "right": "right"},
        "edge": ["{prep} the {d}", "on the {d} side", "near the {d} edge of the image"],
        "corner": ["in the {v} {h}", "in the {v} {h} corner", "at the {v}-{h}"],
        "center": ["in the center", "in the middle", "in the centre of the image"],
        "rel": {"left": ["left of", "to the left of"], "right": ["right of", "to the right of"],
                "above": ["above"], "below": ["below", "beneath"], "near": ["next to", "near", "beside", "close to"],
                "closest": ["closest to", "nearest to"], "on": ["on"]},
        "orient": {"h": (["horizontal"], ["horizontally", "from left to right"]),
                   "v": (["vertical"], ["vertically", "from top to bottom"])},
    },
    "shifted": {
        "nouns": {"building": ["building", "hut", "dwelling"], "vehicle": ["truck", "lorry", "automobile"],
                  "storage tank": ["silo", "fuel tank"], "solar panel": ["solar panel array", "solar farm"],
                  "swimming pool": ["swimming pool", "pool"], "airplane": ["airplane", "aircraft", "plane"],
                  "road": ["highway", "road", "track"], "field": ["plot", "crop plot", "farmland patch"]},
        "the_prob": 1.0,
        "frames": ["segment {e}", "find {e}", "locate {e}", "highlight {e}", "mark {e}", "{e}"],
        "templates": {
            "category": {"": ["the {noun}", "the single {noun}", "the one {noun} in the scene"]},
            "colour": {"": ["the {colour} {noun}", "the {noun} coloured {colour}"]},
            "size": {"large": ["the {noun} with the largest footprint", "the most extensive {noun}"],
                     "small": ["the {noun} with the smallest footprint", "the most compact {noun}"],
                     "pair_large": ["the larger of the two {pl}", "the {noun} with the larger footprint"],
                     "pair_small": ["the smaller of the two {pl}", "the more compact {noun}"]},
            "position": {"region": ["the {noun} {pos}", "the {noun} situated {pos}"],
                         "orient": ["the {orient} {noun}", "the {noun} running {orient_adv}"]},
            "relation": {"": ["the {noun} {rel} {anchor}", "the {noun} lying {rel} {anchor}"]},
            "multi": {"two": ["every {cnoun}", "each of the two {cpl}", "all of the {cpl}", "every single {cnoun}"],
                      "many": ["every {cnoun}", "each {cnoun}", "all of the {cpl}", "all {num} {cpl}"]},
        },
        "dirs": {"top": "north", "bottom": "south", "left": "west", "right": "east"},
        "edge": ["in the {d}", "on the {d}ern side", "in the {d}ern part of the scene"],
        "corner": ["in the {v}{h}", "in the {v}-{h} corner", "in the {v}{h} of the scene"],
        "center": ["in the central area", "at the heart of the scene"],
        "rel": {"left": ["to the west of", "west of"], "right": ["to the east of", "east of"],
                "above": ["to the north of", "north of"], "below": ["to the south of", "south of"],
                "near": ["adjacent to", "bordering", "right beside"],
                "closest": ["nearest to", "with the shortest distance to"], "on": ["driving on", "parked on"]},
        "orient": {"h": (["east-west"], ["from east to west"]), "v": (["north-south"], ["from north to south"])},
    },
}
NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine", 10: "ten"}
PLURAL_EXCEPTIONS = {"aircraft": "aircraft"}


def plural(noun: str) -> str:
    last = noun.rsplit(" ", 1)[-1]
    if last in PLURAL_EXCEPTIONS:
        return noun[: -len(last)] + PLURAL_EXCEPTIONS[last]
    return noun + ("es" if noun.endswith(("s", "sh", "ch")) else "s")
