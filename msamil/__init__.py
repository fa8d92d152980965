"""msamil: reproducible MsaMIL-Net whole-slide-image classification.

Submodules are imported lazily by their users so that light stages (inspect, tissue, cache) never pay for torch.
"""

__version__ = "0.1.0"
