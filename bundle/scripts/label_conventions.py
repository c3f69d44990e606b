"""The label-map conventions the bundle reads, each mapped onto the organs of ``text_pipeline.ORGANS``.

The bundle remaps every label map to ``0`` (background) and ``1..7`` (``ORGANS[i]`` -> ``i + 1``). Left and right
kidneys are merged into ``kidney``; left and right adrenals into ``adrenal_gland``; other structures are background.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

from text_pipeline.organs import ORGANS, organ_index

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

LARGEST_ID: Mapping[str, int] = MappingProxyType(  # every convention's id range is 0..LARGEST_ID
    {
        "btcv": 13,  # 13 organs
        "totalseg_total": 117,  # TotalSegmentator v2, task total: 117 classes
        "totalseg_total_mr": 50,  # task total_mr: 50 classes
        "medsora": len(ORGANS),
    }
)


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
