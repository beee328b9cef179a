"""Model components, one file each: dual-modal encoder, cascaded prompter, SAM 1 / SAM 2.1 segmenters, model, losses."""
from .encoder import DualModalEncoder, TextFeatures
from .prompter import CascadedPrompter, PrompterOutput
from .refseg import RefSegModel, RefSegOutput
from .sam import SamSegmenter
from .sam2_segmenter import Sam2Segmenter

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
