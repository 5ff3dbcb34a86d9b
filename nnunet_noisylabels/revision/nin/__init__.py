"""The noise identification network: network, loss and fusion rules, label-input augmentation, nnU-Net trainer."""
