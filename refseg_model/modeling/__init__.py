"""Model components, one file each: dual-modal encoder, cascaded prompter, SAM segmenter, the full model, losses."""
from .encoder import DualModalEncoder, TextFeatures
from .prompter import CascadedPrompter, PrompterOutput
from .refseg import RefSegModel, RefSegOutput
from .sam import SamSegmenter

__all__ = [
    "DualModalEncoder",
    "TextFeatures",
    "CascadedPrompter",
    "PrompterOutput",
    "SamSegmenter",
    "RefSegModel",
    "RefSegOutput",
]
