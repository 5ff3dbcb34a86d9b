"""The classic noisy-label baselines: robust losses, co-teaching, confident learning (label-issue ranking) and their
nnU-Net trainers."""
