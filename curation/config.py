"""The curation stage's config schemas (``configs/curate.yaml``, section ``curate``).

Thresholds and their reasons are documented with each field: MinHash LSH over caption shingles, SSCD
descriptors (Pizzi et al., CVPR 2022) with a FAISS similarity graph over images.
Load it with ``load_config(CurateConfig, "curate", path, overrides)``. Schemas only: this module imports
pydantic, the standard library and :mod:`copyguard.common`, so reading a config never loads Beam or FAISS.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from copyguard.common.config import StrictModel

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "CurateConfig",
    "ImagesConfig",
    "IOConfig",
    "MinHashConfig",
    "PolicyConfig",
    "ReportConfig",
]

# Decompression-bomb guard: images with more pixels are rejected before decoding (curation.images).
DEFAULT_MAX_PIXELS = 64_000_000


class MinHashConfig(StrictModel):
    """Near-duplicate captions: MinHash LSH (Broder, 1997) with exact Jaccard verification."""

    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations (128-256 usual)")
    canonical: bool = Field(
        True,
        description="compare captions in canonical word form (case, punctuation, articles and stop words, "
        "tag order and product codes ignored; a changed content word is a different caption)",
    )
    drop_stopwords: bool = Field(True, description="canonical form: drop articles and stop words")
    sort_tags: bool = Field(True, description="canonical form: a tag list compares as a set")
    mask_codes: bool = Field(True, description="canonical form: product codes, prices and long numbers match")
    word_ngrams: int = Field(2, ge=1, le=8, description="canonical form: word n-gram shingles")
    exact_max_words: int = Field(
        4, ge=0, le=64, description="canonical captions of at most this many words must match exactly"
    )
    shingle_n: int = Field(5, ge=1, le=64, description="shingle length (only with canonical: false)")
    shingle_kind: Literal["word", "char"] = Field(
        "char", description="word or character n-grams (only with canonical: false)"
    )
    threshold: float = Field(
        0.5,
        gt=0.0,
        lt=1.0,
        description="Jaccard the LSH bands target (about half of such pairs become candidates)",
    )
    seed: int = Field(1, ge=0, description="permutation seed; fixed so signatures match across workers")
    verify: bool = Field(True, description="check candidate pairs with the exact shingle Jaccard")
    verify_threshold: float = Field(0.6, ge=0.0, le=1.0, description="exact Jaccard a verified pair needs")
    max_bucket_size: int = Field(
        1000, ge=2, description="LSH buckets larger than this are logged and linked as a star only"
    )
    max_cc_rounds: int = Field(
        12, ge=1, le=64, description="large-star/small-star rounds of the Beam connected components"
    )


class ImagesConfig(StrictModel):
    """Near-duplicate images: SSCD descriptors, FAISS similarity graph, clustering (Pizzi et al., CVPR 2022)."""

    embedder: Literal["sscd-onnx", "sscd-distilled-onnx", "torchscript"] = "sscd-onnx"
    embedder_path: str | None = Field(None, description="model file; default: the packaged ONNX model")
    input_size: int = Field(320, ge=32, le=2048, description="square resize before the embedder")
    batch_size: int = Field(64, ge=1, description="images per embedder call")
    device: str = Field(
        "cpu",
        pattern=r"^(cpu|cuda(:\d+)?)$",
        description="where the embedder runs: cpu, or cuda / cuda:N (onnxruntime-gpu, i.e. copyguard[gpu])",
    )
    threshold: float = Field(
        0.75, ge=0.0, le=1.0, description="cosine for a pair to be flagged and linked to a representative"
    )
    join_threshold: float = Field(
        0.85, ge=0.0, le=1.0, description="stricter cosine for a leftover singleton to join a group"
    )
    exact_max: int = Field(
        50_000,
        ge=1,
        description="clustering: exact all-pairs search up to this many vectors, IVF above (at 1e5 the exact "
        "search took 5x longer than IVF at equal recall, docs/benchmarks.md)",
    )
    index_exact_max: int = Field(
        1_000_000,
        ge=1,
        description="training index: exact IndexFlatIP up to this many kept images, IVF above (lookups "
        "are few queries, so exact stays cheap far longer than the all-pairs clustering)",
    )
    # IVF defaults from benchmarks/bench_faiss.py (docs/benchmarks.md): 1e6 SSCD-like 512-d vectors on two
    # busy CPU cores. nlist = 4 sqrt(N) (4,000 lists), nprobe 8 and 80k training vectors (20 per list)
    # find 98% of planted pairs in under 3 min (2 sqrt(N) lists: 97.6%, a join 2.5x slower). The former
    # 8 sqrt(N), nprobe 32 and 312k training vectors needed an estimated 20 min (k-means ~8, search ~12).
    ivf_nlist_factor: float = Field(4.0, gt=0.0, description="IVF nlist = factor * sqrt(N)")
    ivf_train_size: int = Field(
        80_000, ge=1000, description="vectors sampled to train the IVF (at least 20 per list)"
    )
    nprobe: int = Field(8, ge=1, description="IVF lists probed per query")
    knn_k: int = Field(64, ge=2, le=2048, description="neighbours per vector for the k-NN graph (GPU)")
    query_batch: int = Field(4096, ge=1, description="queries per FAISS call (bounds memory)")
    use_gpu: Literal["auto"] | bool = Field("auto", description="GPU FAISS: auto-detect, force or forbid")
    seed: int = Field(0, ge=0, description="seed of the IVF training sample")
    # Copy matching (curation/image_match.py, docs/curation.md "Image copies"): SSCD score normalization.
    score_norm: bool = Field(
        False, description="subtract each image's mean similarity to a background set (SSCD sec. 3.4)"
    )
    norm_k: int = Field(20, ge=1, le=1024, description="background neighbours averaged per descriptor")
    norm_beta: float = Field(0.5, ge=0.0, le=4.0, description="weight of the background similarity")
    norm_offset: float = Field(
        0.35, ge=0.0, le=1.0, description="added back, so threshold 0.75 means a normalized score of 0.40"
    )
    norm_background: int = Field(1000, ge=10, description="background descriptors (a fixed sample)")
    # The distributed job's partitioned search (curation/partitions.py, docs/curation.md "Scale"). Defaults
    # from copyguard.pipelines.lab.curate_scale's data at 1e5: about 1,000 descriptors per partition keeps the
    # exact search inside a partition as cheap as the single-worker IVF join (nlist 4 sqrt(N), nprobe 8);
    # margin 0.05 with up to 8 partitions: 3.6 visits per descriptor, 98.5% of planted pairs as candidates
    # (0.1: 5.2 visits, 98.9%; 0.05 with 4: 2.4 visits, 95.6%).
    partition_size: int = Field(
        1000, ge=1, description="distributed search: target descriptors per partition (partitions = N / size)"
    )
    partition_sample: int = Field(
        50_000, ge=20, description="descriptors (smallest key hashes) the coarse k-means is trained on"
    )
    partition_min_train: int = Field(
        20,
        ge=1,
        description="sampled descriptors per centroid at least (fewer partitions beat badly trained ones)",
    )
    partition_probe: int = Field(
        8, ge=1, description="partitions a descriptor is searched in at most: its home plus neighbours"
    )
    partition_margin: float = Field(
        0.05,
        ge=0.0,
        le=2.0,
        description="a neighbouring partition is probed when its centroid similarity is within this of the home's",
    )

    @model_validator(mode="after")
    def _join_not_looser(self) -> ImagesConfig:
        if self.join_threshold < self.threshold:
            raise ValueError(
                f"join_threshold ({self.join_threshold}) must be >= threshold ({self.threshold})"
            )
        return self


class PolicyConfig(StrictModel):
    """Joint keep/drop decision (policy.py)."""

    template_min_images: int = Field(
        5, ge=2, description="a caption group over this many distinct image groups is templated"
    )
    template_policy: Literal["keep", "cap", "drop"] = Field("cap", description="what to do with templated")
    template_cap: int = Field(3, ge=1, description="kept samples per templated caption under 'cap'")
    template_min_words: int = Field(
        3,
        ge=0,
        description="a caption is a template only with at least this many content words (generic short "
        "captions shared by chance never drop distinct image-text pairs)",
    )


class IOConfig(StrictModel):
    """Reading and writing shards."""

    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="decompression-bomb guard")
    max_member_bytes: int = Field(
        64 << 20, ge=1024, description="a tar member larger than this is rejected unread (member_too_large)"
    )
    max_caption_bytes: int = Field(
        8 << 10, ge=16, description="a longer caption is rejected unread (caption_too_long)"
    )
    max_metadata_bytes: int = Field(1 << 20, ge=16, description="a larger .json member is rejected unread")
    samples_per_shard: int = Field(10_000, ge=1, description="output shard rolls after this many samples")
    max_shard_bytes: int = Field(1 << 30, ge=1024, description="output shard rolls after this many bytes")


class ReportConfig(StrictModel):
    """The curation report."""

    top_groups: int = Field(20, ge=0, description="largest duplicate groups listed in the report")
    thumbnails_per_group: int = Field(8, ge=1, description="members shown per group in the report")


class CurateConfig(StrictModel):
    """Everything the curation job reads from ``configs/curate.yaml``."""

    minhash: MinHashConfig = Field(default_factory=MinHashConfig)
    images: ImagesConfig = Field(default_factory=ImagesConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    io: IOConfig = Field(default_factory=IOConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
