"""Class mappings for polygon layers: the New Zealand Land Cover Database (LCDB v5) classes, the
preset that groups them into LCDB's 7 top-level classes, and user-given mappings.

**LCDB v5 classes.** Source: Manaaki Whenua - Landcare Research, *New Zealand Land Cover
Database (LCDB) classes at version 5* (``LCDBClassesAtVersion5.pdf``, an accessory document of
"LCDB v5.0 - Land Cover Database version 5.0, Mainland New Zealand", LRIS portal,
https://lris.scinfo.org.nz/layer/104400-lcdb-v50-land-cover-database-version-50-mainland-new-zealand/;
data licence CC BY 4.0). LCDB identifies 33 mainland land-cover classes (:data:`LCDB_CLASSES`;
35 with the two classes mapped on the offshore Chatham Islands only, :data:`LCDB_CHATHAM_CLASSES`).
Code 0 "Not land" is not a land-cover class: it marks areas outside the coastline where the
shoreline moved between time steps, and no preset maps it. The codes and names were checked
against the ``Class_2018``/``Name_2018`` ... ``Class_1996``/``Name_1996`` values of real LCDB v5
extracts (Christchurch and Blenheim: 26 distinct codes, all in the table with exactly these
names).

**The 7 class groups.** LCDB's class table is organised in 7 top-level groups
(:data:`LCDB_GROUPS`): Artificial Surfaces; Bare or Lightly-vegetated Surfaces; Water Bodies;
Cropland; Grassland, Sedge and Saltmarsh; Scrub and Shrubland; Forest. Paper 2 grouped LCDB's
33 classes into 7 super classes for its aerial-photography experiment; the preset
(:func:`lcdb_preset`) uses LCDB's own 7 groups, which is the natural reading of that grouping
(the paper does not list its table).

**User mappings** (:func:`parse_mapping`): ``"1,2,5=Urban; 40,41=Grassland"`` (values separated
by commas, groups by semicolons or new lines), or a JSON object, either ``{"Urban": [1, 2, 5],
"Grassland": [40, 41]}`` or ``{"1": "Urban", "2": "Urban"}``. Values are matched as text,
case-insensitively, whole numbers without ``.0`` (``40``, ``40.0`` and ``"40"`` match). Values
a mapping does not name are skipped (:func:`map_values` reports them).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..errors import ClassMappingError

#: LCDB's 7 top-level class groups, in LCDB's order, with a legend colour each.
LCDB_GROUPS: list[tuple[str, str]] = [
    ("Artificial Surfaces", "#e0413a"),
    ("Bare or Lightly-vegetated Surfaces", "#c8bfa6"),
    ("Water Bodies", "#3a8ee0"),
    ("Cropland", "#f2d16b"),
    ("Grassland, Sedge and Saltmarsh", "#9ccc65"),
    ("Scrub and Shrubland", "#8d6e3f"),
    ("Forest", "#1b7a2f"),
]

#: The 33 mainland LCDB v5 classes: code -> (name, group).
LCDB_CLASSES: dict[int, tuple[str, str]] = {
    1: ("Built-up Area (settlement)", "Artificial Surfaces"),
    2: ("Urban Parkland/Open Space", "Artificial Surfaces"),
    5: ("Transport Infrastructure", "Artificial Surfaces"),
    6: ("Surface Mine or Dump", "Artificial Surfaces"),
    10: ("Sand or Gravel", "Bare or Lightly-vegetated Surfaces"),
    12: ("Landslide", "Bare or Lightly-vegetated Surfaces"),
    14: ("Permanent Snow and Ice", "Bare or Lightly-vegetated Surfaces"),
    15: ("Alpine Grass/Herbfield", "Bare or Lightly-vegetated Surfaces"),
    16: ("Gravel or Rock", "Bare or Lightly-vegetated Surfaces"),
    20: ("Lake or Pond", "Water Bodies"),
    21: ("River", "Water Bodies"),
    22: ("Estuarine Open Water", "Water Bodies"),
    30: ("Short-rotation Cropland", "Cropland"),
    33: ("Orchard, Vineyard or Other Perennial Crop", "Cropland"),
    40: ("High Producing Exotic Grassland", "Grassland, Sedge and Saltmarsh"),
    41: ("Low Producing Grassland", "Grassland, Sedge and Saltmarsh"),
    43: ("Tall Tussock Grassland", "Grassland, Sedge and Saltmarsh"),
    44: ("Depleted Grassland", "Grassland, Sedge and Saltmarsh"),
    45: ("Herbaceous Freshwater Vegetation", "Grassland, Sedge and Saltmarsh"),
    46: ("Herbaceous Saline Vegetation", "Grassland, Sedge and Saltmarsh"),
    47: ("Flaxland", "Grassland, Sedge and Saltmarsh"),
    50: ("Fernland", "Scrub and Shrubland"),
    51: ("Gorse and/or Broom", "Scrub and Shrubland"),
    52: ("Manuka and/or Kanuka", "Scrub and Shrubland"),
    54: ("Broadleaved Indigenous Hardwoods", "Scrub and Shrubland"),
    55: ("Sub Alpine Shrubland", "Scrub and Shrubland"),
    56: ("Mixed Exotic Shrubland", "Scrub and Shrubland"),
    58: ("Matagouri or Grey Scrub", "Scrub and Shrubland"),
    64: ("Forest - Harvested", "Forest"),
    68: ("Deciduous Hardwoods", "Forest"),
    69: ("Indigenous Forest", "Forest"),
    70: ("Mangrove", "Forest"),
    71: ("Exotic Forest", "Forest"),
}

#: The two classes mapped on the Chatham Islands only (LCDB's 34th and 35th classes).
LCDB_CHATHAM_CLASSES: dict[int, tuple[str, str]] = {
    80: ("Peat Shrubland (Chatham Islands)", "Scrub and Shrubland"),
    81: ("Dune Shrubland (Chatham Islands)", "Scrub and Shrubland"),
}

#: Code 0: not a land-cover class (outside the coastline after the shoreline moved).
LCDB_NOT_LAND = (0, "Not land")

LCDB_SOURCE = (
    "LCDB v5 class table and its 7 top-level class groups: Manaaki Whenua - Landcare Research, "
    "'New Zealand Land Cover Database (LCDB) classes at version 5' (LCDBClassesAtVersion5.pdf, LRIS "
    "portal, layer 104400; CC BY 4.0). Paper 2 grouped LCDB's 33 classes into 7 super classes; these "
    "are LCDB's own 7 groups. Code 0 'Not land' is not mapped."
)


def normalise_value(value: Any) -> str | None:
    """A class-field value as matching text: None/NaN/empty -> None; whole floats lose ``.0``;
    text is stripped and lower-cased."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if not text:
        return None
    try:  # "40.0" written as text
        number = float(text)
        if number.is_integer() and "e" not in text.lower():
            text = str(int(number))
    except ValueError:
        pass
    return text.lower()


@dataclass
class ClassMapping:
    """Field values -> output class names.

    ``classes``: the output class names in model order; ``table``: normalised value (see
    :func:`normalise_value`) -> class name; ``colours``: class name -> ``#rrggbb`` (may be
    partial); ``source``: where the mapping comes from (for the model card)."""

    classes: list[str]
    table: dict[str, str]
    colours: dict[str, str] = field(default_factory=dict)
    source: str = ""
    name: str = "custom"

    def __post_init__(self) -> None:
        unknown = sorted({c for c in self.table.values() if c not in self.classes})
        if unknown:
            raise ClassMappingError(f"the mapping names classes that are not in its class list: {unknown}")

    def class_of(self, value: Any) -> str | None:
        key = normalise_value(value)
        return None if key is None else self.table.get(key)

    def to_dict(self) -> dict[str, Any]:
        groups: dict[str, list[str]] = {c: [] for c in self.classes}
        for value, name in self.table.items():
            groups[name].append(value)
        return {"name": self.name, "classes": list(self.classes), "values": groups, "source": self.source}


def mapping_record(mapping: ClassMapping | None) -> dict[str, Any]:
    """What a model card records of the class mapping its training used (``training.class_mapping``)."""
    return mapping.to_dict() if mapping is not None else {"name": "none", "note": "field values are the classes"}


def lcdb_preset(include_chatham: bool = True) -> ClassMapping:
    """LCDB v5 codes (and class names, case-insensitive) -> LCDB's 7 top-level groups.

    Covers all 33 mainland classes, plus the two Chatham Islands classes unless
    ``include_chatham`` is False. Code 0 (Not land) stays unmapped."""
    classes = dict(LCDB_CLASSES)
    if include_chatham:
        classes.update(LCDB_CHATHAM_CLASSES)
    table: dict[str, str] = {}
    for code, (name, group) in classes.items():
        table[str(code)] = group
        table[name.lower()] = group
    return ClassMapping(
        classes=[g for g, _ in LCDB_GROUPS], table=table, colours=dict(LCDB_GROUPS), source=LCDB_SOURCE,
        name="LCDB v5 -> 7 class groups",
    )


def parse_mapping(text: str) -> ClassMapping:
    """A user mapping: ``"1,2,5=Urban; 40,41=Grassland"`` or a JSON object (see the module
    docstring). Raises :class:`ClassMappingError` naming what cannot be read: an empty mapping, a
    part without ``=``, an empty class name or value, or a value given to two classes."""
    text = (text or "").strip()
    if not text:
        raise ClassMappingError("the class mapping is empty; write e.g. '1,2,5=Urban; 40,41=Grassland'")
    pairs: list[tuple[str, Any]] = []  # (class name, value)
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ClassMappingError(f"the class mapping is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or not data:
            raise ClassMappingError("a JSON class mapping must be a non-empty object")
        if all(isinstance(v, (list, tuple)) for v in data.values()):
            for name, values in data.items():
                if not values:
                    raise ClassMappingError(f"class '{name}' of the mapping has no values")
                pairs += [(str(name), v) for v in values]
        elif all(isinstance(v, str) for v in data.values()):
            pairs = [(str(name), value) for value, name in data.items()]
        else:
            raise ClassMappingError('a JSON class mapping is either {"class": [values]} or {"value": "class"}')
    else:
        parts = [p.strip() for chunk in text.splitlines() for p in chunk.split(";")]
        parts = [p for p in parts if p]
        for part in parts:
            if "=" not in part:
                raise ClassMappingError(f"cannot read '{part}' in the class mapping: expected values=class, "
                                        "e.g. '40,41=Grassland'")
            values, name = part.rsplit("=", 1)
            values_list = [v.strip() for v in values.split(",")]
            if not name.strip():
                raise ClassMappingError(f"'{part}' in the class mapping has no class name after '='")
            if not any(values_list):
                raise ClassMappingError(f"'{part}' in the class mapping has no value before '='")
            pairs += [(name.strip(), v) for v in values_list if v]
    classes: list[str] = []
    table: dict[str, str] = {}
    for name, value in pairs:
        name = name.strip()
        if not name:
            raise ClassMappingError("a class name in the mapping is empty")
        key = normalise_value(value)
        if key is None:
            raise ClassMappingError(f"class '{name}' of the mapping has an empty value")
        if key in table and table[key] != name:
            raise ClassMappingError(f"value '{value}' is mapped to two classes: '{table[key]}' and '{name}'")
        table[key] = name
        if name not in classes:
            classes.append(name)
    return ClassMapping(classes=classes, table=table, source="user mapping: " + " ".join(text.split()),
                        name="custom")


def map_values(values: Sequence[Any], mapping: ClassMapping | None,
               log: Callable[[str], None] | None = None) -> list[str | None]:
    """The class name of each value (None where unmapped or empty). Without a mapping the
    values' text is the class (as ``glassbox:train_classifier`` does). Unmapped values are
    reported in one log line with their counts (LCDB codes with their names)."""
    from ..training.data import class_names_from_values

    if mapping is None:
        return class_names_from_values(list(values))[1]
    out: list[str | None] = []
    unmapped: Counter = Counter()
    for value in values:
        name = mapping.class_of(value)
        if name is None and normalise_value(value) is not None:
            unmapped[normalise_value(value)] += 1
        out.append(name)
    if unmapped and log is not None:
        log(f"{sum(unmapped.values())} polygon(s) have values the mapping '{mapping.name}' does not map and are "
            "skipped: " + ", ".join(f"{_describe(v, mapping.source == LCDB_SOURCE)} x{n}"
                                     for v, n in sorted(unmapped.items(), key=_sort_key)))
    return out


def mapped_classes(values: Sequence[Any], mapping: ClassMapping | None,
                   log: Callable[[str], None] | None = None) -> list[str | None]:
    """:func:`map_values`, refusing with :class:`ClassMappingError` when no value gets a class."""
    classes = map_values(values, mapping, log)
    if not any(c is not None for c in classes):
        raise ClassMappingError(
            "the class mapping maps none of the polygons' class values"
            + (f" (mapping '{mapping.name}')" if mapping is not None else "")
            + "; check the class field and the mapping"
            + (f": the field holds e.g. {', '.join(repr(v) for v in _examples(values))}, the mapping maps "
               f"{', '.join(repr(v) for v in list(mapping.table)[:6])}{' ...' if len(mapping.table) > 6 else ''} "
               "(written 'value, value = class; ...', the field's values left of '=')"
               if mapping is not None and mapping.source != LCDB_SOURCE else "")
        )
    return classes


def _examples(values: Sequence[Any], count: int = 5) -> list[str]:
    """Up to ``count`` distinct non-empty values, normalised as the mapping reads them."""
    seen: list[str] = []
    for value in values:
        key = normalise_value(value)
        if key is not None and key not in seen:
            seen.append(key)
            if len(seen) == count:
                break
    return seen


def _describe(value: str, lcdb_names: bool = True) -> str:
    """``value`` for a log line; an integer with its LCDB class name when ``lcdb_names``."""
    try:
        code = int(value)
    except ValueError:
        return f"'{value}'"
    if not lcdb_names:
        return str(code)
    if code == LCDB_NOT_LAND[0]:
        return f"{code} ({LCDB_NOT_LAND[1]})"
    entry = LCDB_CLASSES.get(code) or LCDB_CHATHAM_CLASSES.get(code)
    return f"{code} ({entry[0]})" if entry else str(code)


def _sort_key(item: tuple[str, int]) -> tuple[int, float, str]:
    try:
        return (0, float(item[0]), "")
    except ValueError:
        return (1, 0.0, item[0])


def lcdb_name(code: int) -> str | None:
    """The LCDB v5 class name of a code (None when unknown)."""
    entry = LCDB_CLASSES.get(int(code)) or LCDB_CHATHAM_CLASSES.get(int(code))
    return entry[0] if entry else (LCDB_NOT_LAND[1] if int(code) == 0 else None)


def codes_in_group(group: str) -> list[int]:
    return [c for c, (_n, g) in {**LCDB_CLASSES, **LCDB_CHATHAM_CLASSES}.items() if g == group]


__all__ = [
    "LCDB_GROUPS", "LCDB_CLASSES", "LCDB_CHATHAM_CLASSES", "LCDB_NOT_LAND", "LCDB_SOURCE", "ClassMapping",
    "lcdb_preset", "parse_mapping", "map_values", "mapped_classes", "normalise_value", "lcdb_name", "codes_in_group",
]
