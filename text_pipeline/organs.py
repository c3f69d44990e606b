"""The organ vocabulary of Med-SORA and the words that name each organ.

Defined once for the whole project: the text pipeline orders its soft labels by :data:`ORGANS`, and the bundle
its logits and label ids (``ORGANS[i]`` -> ``i + 1``; the label maps' conventions are the bundle's,
``bundle/scripts/label_conventions.py``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

ORGANS: tuple[str, ...] = ("liver", "pancreas", "kidney", "gallbladder", "spleen", "stomach", "adrenal_gland")

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
