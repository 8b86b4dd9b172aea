"""copyguard.curation: data records, shard I/O, dedup building blocks and the training-set index.

No Beam, no training, no diffusers: the Beam jobs in ``copyguard.pipelines`` wrap these plain functions.
Importing the package imports nothing else (Beam workers stay light); each name below is imported from its
module on first use.

Public API:

- config (section ``curate``): ``CurateConfig``, ``MinHashConfig``, ``ImagesConfig``, ``PolicyConfig``;
- records and shards: ``Sample``, ``Rejection``, ``RejectReason``, ``iter_samples``, ``read_shard``,
  ``ShardWriter``;
- captions (MinHash LSH): ``minhash_signature``, ``minhash_signatures``, ``caption_groups``;
- images (SSCD + FAISS): ``load_embedder``, ``cluster_embeddings``, ``connected_components``;
- decisions and outputs: ``decide``, ``Decision``, ``read_manifest``, ``write_manifest``;
- the training-set index: ``load_index`` (opens any index), ``TrainingIndex``, ``ShardedIndex``,
  ``IndexEntry``, ``NearestResult``;
- scoring a curation against a ground truth: ``evaluate_manifest``.
"""

from copyguard.common.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    """
    config: CurateConfig MinHashConfig ImagesConfig PolicyConfig
    records: Sample Rejection RejectReason
    shards: iter_samples read_shard ShardWriter
    captions: minhash_signature minhash_signatures caption_groups
    embedders: load_embedder
    clustering: cluster_embeddings
    union_find: connected_components
    policy: decide Decision
    manifest: read_manifest write_manifest
    index: TrainingIndex IndexEntry NearestResult
    index_shards: ShardedIndex load_index
    evaluate: evaluate_manifest
""",
)
