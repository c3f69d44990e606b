"""Med-SORA text pipeline: symptom corpus, text embeddings, organ anchors and soft labels.

This package also holds the project's single organ vocabulary (:mod:`text_pipeline.organs`),
which the MONAI bundle imports so that text and image sides agree on organ order; the label-map
conventions belong to the bundle (``bundle/scripts/label_conventions.py``).
"""

from text_pipeline.organs import (
    ORGAN_NAME_STEMS,
    ORGANS,
    organ_index,
    organs_named_in,
)

__all__ = [
    "ORGAN_NAME_STEMS",
    "ORGANS",
    "organ_index",
    "organs_named_in",
]
