"""Med-SORA text pipeline: symptom corpus, text embeddings, organ anchors and soft labels.

This package also holds the project's single organ vocabulary (:mod:`text_pipeline.organs`),
which the MONAI bundle imports so that text and image sides agree on organ order.
"""

from text_pipeline.organs import (
    LABEL_CONVENTIONS,
    ORGAN_NAME_STEMS,
    ORGANS,
    organ_index,
    organ_lookup_table,
    organs_named_in,
)

__all__ = [
    "LABEL_CONVENTIONS",
    "ORGAN_NAME_STEMS",
    "ORGANS",
    "organ_index",
    "organ_lookup_table",
    "organs_named_in",
]
