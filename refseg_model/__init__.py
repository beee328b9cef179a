"""refseg_model: decoupled referring remote-sensing image segmentation (RSRefSeg 2 style).

CLIP/SigLIP dual-modal encoder -> cascaded second-order prompter -> SAM mask decoder.
Pure PyTorch: nothing here imports web or queue code.
"""

__version__ = "0.1.0"
