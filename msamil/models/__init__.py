"""Stage "models": MsaMIL-Net and the shared patch backbone (rules/train.smk, baselines.smk, lesion.smk).

MSFEM patch encoder, IAAM fusion (MHE + DMQ, or gated attention), the full network; `backbone` creates the
backbone every method shares and picks the device.
"""

from msamil.models.iaam import IAAM, DMQPool, GatedAttentionPool, MHEBlock, instance_order
from msamil.models.msamil_net import MsaMILNet, build_model
from msamil.models.msfem import MSFEM

__all__ = ["IAAM", "MSFEM", "DMQPool", "GatedAttentionPool", "MHEBlock", "MsaMILNet", "build_model",
           "instance_order"]
