"""The organ vocabulary of Med-SORA and the label conventions mapped onto it.

Defined once for the whole project: the text pipeline orders its soft labels by :data:`ORGANS`,
and the bundle remaps every label map to ``0`` (background) and ``1..7`` (``ORGANS[i]`` -> ``i + 1``).
Left and right kidneys are merged into ``kidney``; left and right adrenals into ``adrenal_gland``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

ORGANS: tuple[str, ...] = ("liver", "pancreas", "kidney", "gallbladder", "spleen", "stomach", "adrenal_gland")

_TOTALSEGMENTATOR_V2 = {  # ids 1-9 are the same in TotalSegmentator v2's `total` and `total_mr` tasks
    1: "spleen",
    2: "kidney",  # kidney_right
    3: "kidney",  # kidney_left
    4: "gallbladder",
    5: "liver",
    6: "stomach",
    7: "pancreas",
    8: "adrenal_gland",  # adrenal_gland_right
    9: "adrenal_gland",  # adrenal_gland_left
}

LABEL_CONVENTIONS: Mapping[str, Mapping[int, str]] = MappingProxyType(
    {
        # BTCV (Synapse multi-atlas abdomen): 5 esophagus, 8 aorta, 9 IVC, 10 portal/splenic veins are dropped.
        "btcv": MappingProxyType(
            {
                1: "spleen",
                2: "kidney",  # right kidney
                3: "kidney",  # left kidney
                4: "gallbladder",
                6: "liver",
                7: "stomach",
                11: "pancreas",
                12: "adrenal_gland",  # right adrenal gland
                13: "adrenal_gland",  # left adrenal gland
            }
        ),
        "totalseg_total": MappingProxyType(dict(_TOTALSEGMENTATOR_V2)),
        "totalseg_total_mr": MappingProxyType(dict(_TOTALSEGMENTATOR_V2)),
        # label maps already in this project's convention: ORGANS[i] -> i + 1
        "medsora": MappingProxyType({i + 1: name for i, name in enumerate(ORGANS)}),
    }
)


# Words that name an organ outright, case-insensitive. A stem matches at the start of a word ("hepat" catches
# hepatic, hepatitis and hepatomegaly, while "epigastric", a region, passes); an infix matches anywhere in a
# word ("intrahepatic", "pericholecystic", "hepatosplenomegaly"; not "nephr", which is in "metanephrine", an
# adrenal hormone). A symptom text must name none of them (method.md §1).
ORGAN_NAME_STEMS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "liver": ("liver", "hepat", "hep a", "hep b", "hep c", "hep e"),
        "pancreas": ("pancrea",),
        "kidney": ("kidney", "renal", "nephr"),
        "gallbladder": (
            "gallbladder",
            "gall bladder",
            "gall-bladder",
            "gallstone",
            "cholecyst",
            "cholelith",
            "lap chole",
            "biliar",
            "choledoch",
            "cholangi",
        ),
        "spleen": ("spleen", "splen"),
        "stomach": ("stomach", "gastr"),
        "adrenal_gland": ("adrenal", "suprarenal"),
    }
)
ORGAN_NAME_INFIXES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "liver": ("hepat",),
        "pancreas": ("pancrea",),
        "gallbladder": ("cholecyst", "cholelith", "gallstone"),
        "spleen": ("splen",),
    }
)


def _pattern(organ: str) -> re.Pattern:
    stems = [r"\b" + re.escape(stem) for stem in ORGAN_NAME_STEMS[organ]]
    stems += [re.escape(infix) for infix in ORGAN_NAME_INFIXES.get(organ, ())]
    return re.compile("|".join(stems), re.IGNORECASE)


_STEM_PATTERNS = {organ: _pattern(organ) for organ in ORGAN_NAME_STEMS}


def organs_named_in(text: str) -> list[str]:
    """The organs whose name or obvious stem ``text`` contains (empty for a text that leaks no organ)."""
    return [organ for organ, pattern in _STEM_PATTERNS.items() if pattern.search(text)]


def organ_index(name: str) -> int:
    """Index of organ ``name`` in :data:`ORGANS` (its class index; its label value is index + 1)."""
    try:
        return ORGANS.index(name)
    except ValueError:
        raise ValueError(f"unknown organ {name!r}; known organs: {', '.join(ORGANS)}") from None


def organ_lookup_table(convention: str, max_label: int = 255) -> np.ndarray:
    """Lookup table remapping a label map of ``convention`` to this project's labels.

    Args:
        convention: a key of :data:`LABEL_CONVENTIONS`.
        max_label: the largest source label value the table must cover.

    Returns:
        ``lut`` of shape ``(max_label + 1,)`` and dtype uint8 with ``lut[source_id]`` = ``organ_index + 1``
        for the 7 organs and 0 for everything else.
    """
    if convention not in LABEL_CONVENTIONS:
        raise ValueError(f"unknown label convention {convention!r}; known conventions: {', '.join(LABEL_CONVENTIONS)}")
    lut = np.zeros(max_label + 1, dtype=np.uint8)
    for source_id, name in LABEL_CONVENTIONS[convention].items():
        if source_id <= max_label:
            lut[source_id] = organ_index(name) + 1
    return lut
