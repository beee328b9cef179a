"""Model components, one file each: dual-modal encoder, cascaded prompter, SAM 1 / SAM 2.1 segmenters, the full model, losses."""
from .encoder import DualModalEncoder, TextFeatures
from .prompter import CascadedPrompter, PrompterOutput
from .sam import SamSegmenter
from .sam2_segmenter import Sam2Segmenter
from .refseg import RefSegModel, RefSegOutput

__all__ = [
    "DualModalEncoder",
    "TextFeatures",
    "CascadedPrompter",
    "PrompterOutput",
    "SamSegmenter",
    "Sam2Segmenter",
    "RefSegModel",
    "RefSegOutput",
]
