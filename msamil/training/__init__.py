"""Stage "training": MsaMIL-Net training, inference, metrics and run outputs (rules/train.smk)."""
