"""The global and per-shard steps of the curation job (plain functions and DoFns used by curate.py).

- :func:`decide_globally`: image clusters (FAISS), caption groups joined in, the joint policy, and the
  training-set index of the kept images (merged with the reference run's index for incremental runs).
- :class:`WriteShardOutputs`: per input shard, the cleaned shard(s), the manifest part and thumbnails.
- :func:`write_report`: totals, the inputs = kept + duplicate + rejected invariant, report.json/html.
"""

from __future__ import annotations

import base64
import io
import json
import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any

import apache_beam as beam
import numpy as np

from copyguard.curation.captions import minhash_signature
from copyguard.curation.clustering import cluster_embeddings
from copyguard.curation.curate_config import CurateConfig
from copyguard.curation.curate_report import render_report_html
from copyguard.curation.embedders import embedder_info, load_embedder
from copyguard.curation.fileops import atomic_write
from copyguard.curation.images import decode_image
from copyguard.curation.index import IndexEntry, TrainingIndex
from copyguard.curation.manifest import rejection_row, write_manifest
from copyguard.curation.policy import decide, summarize
from copyguard.curation.records import Sample
from copyguard.curation.shards import ShardWriter, read_shard
from copyguard.pipelines.beam_io import BeamFileOps
from copyguard.pipelines.transforms import Light

__all__ = [
    "SUMMARY",
    "WriteShardOutputs",
    "decide_globally",
    "load_reference",
    "thumbnail_keys",
    "write_report",
]

log = logging.getLogger(__name__)

SUMMARY = "summary"


def load_reference(reference_dir: str) -> Iterable[Light]:
    """The kept entries of an earlier run's index as reference :class:`Light` records."""
    index = TrainingIndex.load(BeamFileOps().join(reference_dir, "index"), fs=BeamFileOps())
    vectors = index.vectors()
    for row, (key, caption) in enumerate(zip(index.keys, index.captions, strict=True)):
        yield Light(key, "", caption, 0, 0, vectors[row], reference=True)


def _dup_captions(keys, image_group, caption_group, captions) -> dict[str, tuple[str, int]]:
    """Per image group: the caption of its most common caption group and that group's count (§6.2)."""
    counts = Counter(zip(image_group, caption_group, strict=True))
    first_caption: dict[tuple[str, str], str] = {}
    for _key, g, c, text in sorted(zip(keys, image_group, caption_group, captions, strict=True)):
        first_caption.setdefault((g, c), text)
    best: dict[str, tuple[int, str]] = {}
    for (g, c), n in counts.items():
        if g not in best or (-n, c) < (-best[g][0], best[g][1]):
            best[g] = (n, c)
    return {g: (first_caption[(g, c)], n) for g, (n, c) in best.items()}


def decide_globally(
    lights: list[Light],
    caption_pairs: list[tuple[str, str]],
    cfg: CurateConfig,
    output: str,
    reference: str | None,
):
    """Cluster, decide and index: yields one manifest row per new sample, plus the summary (tagged)."""
    fs = BeamFileOps()
    lights = sorted(lights, key=lambda r: r.key)
    keys = [r.key for r in lights]
    dim = lights[0].embedding.shape[0] if lights else 0
    emb = np.stack([r.embedding for r in lights]) if lights else np.zeros((0, dim), np.float32)
    image_group = cluster_embeddings(keys, emb, cfg.images) if lights else []
    cap = dict(caption_pairs)
    caption_group = [cap.get(k, k) for k in keys]
    preferred = {r.key for r in lights if r.reference}
    decisions = decide(
        keys,
        [r.width for r in lights],
        [r.height for r in lights],
        image_group,
        caption_group,
        cfg.policy,
        preferred=preferred,
    )
    new_decisions = [d for d in decisions if d.key not in preferred]
    by_key = {r.key: r for r in lights}
    for d in new_decisions:
        row = d.row()
        yield {**row, "shard": by_key[d.key].shard, "detail": ""}

    # The training-set index of the kept new images (plus the reference run's, merged).
    image_sizes = Counter(image_group)
    caption_sizes = Counter(caption_group)
    dup = _dup_captions(keys, image_group, caption_group, [r.caption for r in lights])
    kept = [(i, d) for i, d in enumerate(decisions) if d.status == "kept" and d.key not in preferred]
    entries = []
    for i, d in kept:
        g, c = image_group[i], caption_group[i]
        entries.append(
            IndexEntry(
                key=d.key,
                caption=lights[i].caption,
                caption_group=c,
                image_group=g,
                caption_group_size=caption_sizes[c],
                image_group_size=image_sizes[g],
                dup_caption=dup[g][0],
                dup_caption_count=dup[g][1],
            )
        )
    embedder = load_embedder(
        cfg.images.embedder, path=cfg.images.embedder_path, input_size=cfg.images.input_size
    )
    minhash = (
        np.stack([minhash_signature(lights[i].caption, cfg.minhash) for i, _ in kept])
        if kept
        else np.zeros((0, cfg.minhash.num_perm), np.uint64)
    )
    index = TrainingIndex.build(
        emb[[i for i, _ in kept]] if kept else np.zeros((0, dim or 512), np.float32),
        entries,
        embedder_info(embedder),
        minhash,
        minhash_info=cfg.minhash.model_dump(),
        kind="auto",
        exact_max=cfg.images.index_exact_max,
    )
    if reference:
        index = TrainingIndex.load(fs.join(reference, "index"), fs=fs).merge(index)
    index.save(fs.join(output, "index"), fs=fs)

    summary = summarize(new_decisions, cfg.report.top_groups)
    _add_group_members(summary, new_decisions, by_key, cfg.report.thumbnails_per_group)
    summary["reference_entries"] = len(preferred)
    summary["index_entries"] = len(index)
    yield beam.pvalue.TaggedOutput(SUMMARY, summary)


def _add_group_members(summary: dict, decisions, by_key: dict[str, Light], per_group: int) -> None:
    """Attach member keys and captions to the summary's largest groups (the report shows them)."""
    members: dict[tuple[str, str], list[str]] = {}
    for d in decisions:
        members.setdefault(("image", d.image_group), []).append(d.key)
        members.setdefault(("caption", d.caption_group), []).append(d.key)
    for kind in ("image", "caption"):
        for group in summary.get(f"top_{kind}_groups", []):
            keys = sorted(members.get((kind, group["group"]), []))[:per_group]
            group["members"] = [{"key": k, "caption": by_key[k].caption} for k in keys]


def thumbnail_keys(summary: dict) -> list[str]:
    """Keys whose thumbnails the report shows: members of the largest image-duplicate groups."""
    return sorted({m["key"] for g in summary.get("top_image_groups", []) for m in g.get("members", [])})


def _thumbnail(data: bytes, size: int = 96) -> str:
    img = decode_image(data)
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return base64.b64encode(buf.getvalue()).decode("ascii")


class WriteShardOutputs(beam.DoFn):
    """Per input shard: re-read it, write its kept samples and its manifest part, emit thumbnails/counts.

    Re-reading the shard (instead of carrying image bytes through the shuffles) keeps every shuffle light.
    Output names derive from the input shard's position in the sorted input list, so reruns produce the same
    files. Emits ``("counts", Counter)`` and ``("thumb", (key, base64_jpeg))``.
    """

    def __init__(self, output: str, shard_index: dict[str, int], cfg: CurateConfig) -> None:
        self.output = output
        self.shard_index = shard_index
        self.cfg = cfg

    def process(self, item: tuple[str, dict[str, list]], thumb_keys: Iterable[str] = ()):
        shard, grouped = item
        rows = list(grouped["decisions"]) + [rejection_row(r) for r in grouped["rejections"]]
        fs = BeamFileOps()
        idx = self.shard_index[shard]
        kept = {r["key"] for r in rows if r["status"] == "kept"}
        wanted = set(thumb_keys)
        if kept or wanted & {r["key"] for r in rows}:
            writer = ShardWriter(
                fs.join(self.output, "shards"),
                prefix=f"part-{idx:05d}",
                max_count=self.cfg.io.samples_per_shard,
                max_bytes=self.cfg.io.max_shard_bytes,
                fs=fs,
            )
            written: set[str] = set()
            with fs.open(shard) as stream, writer:
                for record in read_shard(stream, shard, self.cfg.io.max_pixels):
                    if not isinstance(record, Sample) or record.key in written:
                        continue
                    if record.key in kept:
                        writer.write(record)
                        written.add(record.key)
                    if record.key in wanted:
                        yield ("thumb", (record.key, _thumbnail(record.image)))
            if written != kept:
                raise RuntimeError(f"{shard}: {len(kept - written)} kept samples were not found on re-read")
        write_manifest(fs.join(self.output, "manifest", f"part-{idx:05d}.parquet"), rows, fs=fs)
        yield ("counts", Counter((r["status"], r["reason"]) for r in rows))


def write_report(
    _: Any,
    output: str,
    inputs: int,
    counts: list[Counter],
    summaries: list[dict],
    thumbs: list,
    cfg: CurateConfig,
) -> dict:
    """Totals, the accounting invariant, report.json and report.html. Raises when samples went missing."""
    fs = BeamFileOps()
    total: Counter = Counter()
    for c in counts:
        total.update(c)
    summary = summaries[0] if summaries else {}
    by_status = Counter()
    by_reason: Counter = Counter()
    for (status, reason), n in total.items():
        by_status[status] += n
        if reason:
            by_reason[f"{status}:{reason}"] += n
    accounted = sum(by_status.values())
    report = {
        "inputs": inputs,
        "accounted": accounted,
        "invariant_holds": accounted == inputs,
        "by_status": {s: by_status.get(s, 0) for s in ("kept", "duplicate", "rejected")},
        "by_reason": dict(sorted(by_reason.items())),
        "summary": summary,
        "config": cfg.model_dump(mode="json"),
    }
    thumbs_by_key = dict(thumbs)
    atomic_write(fs.join(output, "report.json"), json.dumps(report, indent=2, sort_keys=True), fs)
    atomic_write(fs.join(output, "report.html"), render_report_html(report, thumbs_by_key), fs)
    if accounted != inputs:
        raise RuntimeError(
            f"accounting invariant broken: {inputs} input samples but {accounted} manifest rows "
            f"(kept {by_status['kept']}, duplicate {by_status['duplicate']}, rejected {by_status['rejected']})"
        )
    return report
