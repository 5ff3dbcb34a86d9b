"""Phase 1, label revision (``nnUNetv2_nl_revise``): a noise identification network (:mod:`.nin`) learned from the
clean pairs rewrites the imperfect labels. :mod:`.api` orchestrates the steps of the other modules."""
