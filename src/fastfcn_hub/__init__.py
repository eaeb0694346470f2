"""fastfcn-hub: FastFCN (Joint Pyramid Upsampling) semantic segmentation for the Hugging Face and timm world.

Importing the package registers FastFCN with transformers' Auto classes, so `AutoConfig`,
`AutoModelForSemanticSegmentation`, `AutoImageProcessor` and `pipeline("image-segmentation")` load saved models.
"""

import logging

from transformers import AutoConfig, AutoImageProcessor, AutoModelForSemanticSegmentation, AutoVideoProcessor

from .configuration_fastfcn import FastFCNConfig
from .image_processing_fastfcn import FastFCNImageProcessor
from .labels import ADE20K_CLASSES, CITYSCAPES_CLASSES
from .modeling_fastfcn import FastFCN, FastFCNForSemanticSegmentation, FastFCNPreTrainedModel
from .variants import VARIANTS, Variant, create_model, get_variant, list_models, variant_config

__version__ = "0.1.0"

AutoConfig.register(FastFCNConfig.model_type, FastFCNConfig, exist_ok=True)
AutoModelForSemanticSegmentation.register(FastFCNConfig, FastFCNForSemanticSegmentation, exist_ok=True)
AutoImageProcessor.register(FastFCNConfig, image_processor_classes={"torchvision": FastFCNImageProcessor},
                            exist_ok=True)  # fmt: skip
# FastFCN has no video processor. Saying so explicitly stops `pipeline("image-segmentation")` (which also probes for a
# video processor) from mistaking our image processor's `auto_map` for remote video code and prompting for
# `trust_remote_code` on a terminal.
AutoVideoProcessor.register(FastFCNConfig, video_processor_classes={}, exist_ok=True)
# Saved directories carry our code and an `auto_map`, so they also load with `trust_remote_code=True` where
# fastfcn_hub is not installed.
FastFCNConfig.register_for_auto_class()
FastFCNForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")
FastFCNImageProcessor.register_for_auto_class("AutoImageProcessor")


class _RegisteredModelIsSupported(logging.Filter):
    """Drop the image-segmentation pipeline's "model is not supported" error for our (registered) model.

    The pipeline checks the model class against transformers' built-in name tables only, not the Auto classes'
    registrations, and logs a false error although it then runs our model normally.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(
            f"The model '{FastFCNForSemanticSegmentation.__name__}' is not supported"
        )


logging.getLogger("transformers.pipelines.base").addFilter(_RegisteredModelIsSupported())

__all__ = [
    "ADE20K_CLASSES",
    "CITYSCAPES_CLASSES",
    "VARIANTS",
    "FastFCN",
    "FastFCNConfig",
    "FastFCNForSemanticSegmentation",
    "FastFCNImageProcessor",
    "FastFCNPreTrainedModel",
    "Variant",
    "create_model",
    "get_variant",
    "list_models",
    "variant_config",
]
