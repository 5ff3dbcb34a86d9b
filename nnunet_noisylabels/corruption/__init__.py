"""Label corruption: noise models on label maps (pure numpy/scipy, :mod:`.noise`) and the writer of a noisy-label
nnU-Net dataset (:mod:`.dataset`, ``nnUNetv2_nl_corrupt``)."""
