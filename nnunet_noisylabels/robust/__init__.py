"""Phase 2, noise-robust training (``-tr NoiseRobustTrainer``): soft targets, the twin network, its trainer and the
export to a stock nnU-Net model folder."""
