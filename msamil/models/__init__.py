"""MsaMIL-Net models: MSFEM patch encoder, IAAM fusion (MHE + DMQ, or gated attention), the full network."""

from msamil.models.iaam import IAAM, DMQPool, GatedAttentionPool, MHEBlock, instance_order
from msamil.models.msamil_net import MsaMILNet, build_model
from msamil.models.msfem import MSFEM

__all__ = ["IAAM", "MSFEM", "DMQPool", "GatedAttentionPool", "MHEBlock", "MsaMILNet", "build_model",
           "instance_order"]
