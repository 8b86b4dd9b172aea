"""copyguard.curation: data records, shard I/O, dedup building blocks and the training-set index.

No Beam, no training, no diffusers: the Beam jobs in ``copyguard.pipelines`` wrap these plain functions.
"""
