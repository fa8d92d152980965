"""Stage "baselines": ABMIL, DINO + ABMIL and ICMIL, compared with MsaMIL-Net (rules/baselines.smk).

Same folds, backbone and initialisation as MsaMIL-Net (DESIGN.md section 7).

- `features`: frozen-backbone embeddings of every tissue 20x patch of a slide (CLAM-style feature files).
- `abmil`: the gated attention MIL head (Ilse et al. 2018) shared by all three baselines.
- `dino`: DINO self-supervised pretraining of the backbone on the fold's training patches.
- `icmil`: ICMIL embedder fine-tuning with the bag head as the instance teacher.
- `run`: one entry per method kind running the whole per-fold pipeline and writing the run outputs.
"""
