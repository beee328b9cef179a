"""Model components, one file each: dual-modal encoder, cascaded prompter, SAM segmenter, the full model, losses."""
from .encoder import DualModalEncoder, TextFeatures
from .prompter import CascadedPrompter, PrompterOutput
from .sam import SamSegmenter
from .refseg import RefSegModel, RefSegOutput

__all__ = [
    "DualModalEncoder",
    "TextFeatures",
    "CascadedPrompter",
    "PrompterOutput",
    "SamSegmenter",
    "RefSegModel",
    "RefSegOutput",
]
