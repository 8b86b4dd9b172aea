"""The per-sample, per-component and per-shard steps of the curation job (used by curate_graph.py).

- :func:`reference_members`: an earlier run's index shard as policy records (incremental runs).
- :func:`exclude_key`: one line of ``--exclude-keys`` (a key, or a ``filtered.jsonl`` record) -> the key.
- :func:`route_to_component` + :class:`DecideComponent`: every sample with its component's edges, and the
  joint policy per connected component (:func:`copyguard.curation.component_policy.decide_component`);
  samples without any edge take the fast path :func:`decide_single`.
- :class:`MergeSummaries`: the report's summary, added up from per-component summaries.
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

from copyguard.common.fileops import atomic_write
from copyguard.curation.component_policy import (
    ComponentResult,
    Member,
    decide_component,
    empty_summary,
    merge_summaries,
)
from copyguard.curation.config import CurateConfig
from copyguard.curation.curate_report import render_report_html
from copyguard.curation.images import decode_image
from copyguard.curation.index import IndexEntry
from copyguard.curation.index_shards import read_shard as read_index_shard
from copyguard.curation.manifest import rejection_row, write_manifest
from copyguard.curation.records import Sample
from copyguard.curation.shards import ShardWriter, read_shard
from copyguard.pipelines.beam_io import BeamFileOps, io_limits
from copyguard.pipelines.progress import Progress

__all__ = [
    "ENTRIES",
    "SINGLE",
    "SUMMARY",
    "UPDATES",
    "DecideComponent",
    "MergeSummaries",
    "WriteShardOutputs",
    "decide_single",
    "exclude_key",
    "reference_members",
    "route_to_component",
    "singles_summary",
    "thumbnail_keys",
    "write_report",
]

log = logging.getLogger(__name__)

SUMMARY = "summary"
ENTRIES = "entries"
UPDATES = "updates"
SINGLE = "single"


def reference_members(partition: int, reference: str) -> Iterable[Member]:
    """The entries of partition ``partition``'s shard of the reference run's index, as policy records."""
    fs = BeamFileOps()
    shard = read_index_shard(fs.join(reference, "index"), partition, fs=fs)
    for row in range(len(shard)):
        entry = shard.entry(row)
        yield Member(entry.key, "", entry.caption, 0, 0, partition, entry)


def exclude_key(line: str) -> Iterable[str]:
    """A key from one line of an ``--exclude-keys`` file: a bare key, or the trainer's ``filtered.jsonl``
    record (``{"key": ..., "step": ...}``). Blank lines and ``#`` comments give nothing."""
    text = line.strip()
    if not text or text.startswith("#"):
        return
    if text.startswith("{"):
        key = json.loads(text).get("key")
        if key:
            yield str(key)
    else:
        yield text


def route_to_component(item: tuple[str, dict[str, list]]):
    """Per key: its record, component label, image edges (keyed by their smaller end), caption edges and
    exclusion flag -> ``(component, part)`` parts for :class:`DecideComponent`, or (no edge at all) the
    sample alone, tagged ``SINGLE``."""
    key, joined = item
    members = list(joined["member"])
    if not members:
        # an excluded key that is not an input
        return
    member, excluded = members[0], bool(list(joined["excluded"]))
    labels, image, caption = list(joined["label"]), list(joined["image"]), list(joined["caption"])
    if not (labels or image or caption):
        yield beam.pvalue.TaggedOutput(SINGLE, (member, excluded))
        return
    component = labels[0] if labels else key
    yield component, ("m", member, excluded)
    for edge in image:
        yield component, ("i", edge)
    for edge in caption:
        yield component, ("c", edge)


def _emit(result: ComponentResult):
    yield from result.rows
    for e in result.entries:
        yield beam.pvalue.TaggedOutput(ENTRIES, e)
    for u in result.updates:
        yield beam.pvalue.TaggedOutput(UPDATES, u)


class DecideComponent(beam.DoFn):
    """``(component, parts)`` -> manifest rows (main), ``ENTRIES``, ``UPDATES`` and ``SUMMARY``."""

    def __init__(self, cfg: CurateConfig) -> None:
        self.cfg = cfg
        self.progress = Progress("components_decided")

    def process(self, item: tuple[str, Iterable[tuple]]):
        _, parts = item
        members, image, caption, excluded = [], [], [], set()
        for part in parts:
            if part[0] == "m":
                members.append(part[1])
                if part[2]:
                    excluded.add(part[1].key)
            elif part[0] == "i":
                image.append(part[1])
            else:
                caption.append(part[1])
        result = decide_component(members, image, caption, self.cfg, excluded)
        self.progress.add()
        yield from _emit(result)
        yield beam.pvalue.TaggedOutput(SUMMARY, result.summary)


def decide_single(item: tuple[Member, bool], cfg: CurateConfig):
    """A sample without any image or caption edge: kept, its own groups (unless excluded); a reference
    sample without edges changes nothing. Outputs as :class:`DecideComponent`'s, ``SINGLE`` counts."""
    member, excluded = item
    if member.reference and not excluded:
        # an earlier run's entry that nothing new touches: its shard is copied as it is
        return
    if excluded:
        result = decide_component([member], [], [], cfg, {member.key} if excluded else ())
        yield from _emit(result)
        yield beam.pvalue.TaggedOutput(SUMMARY, result.summary)
        return
    key = member.key
    yield {
        "key": key,
        "status": "kept",
        "reason": "",
        "representative": key,
        "image_group": key,
        "caption_group": key,
        "shard": member.shard,
        "detail": "",
    }
    yield beam.pvalue.TaggedOutput(
        ENTRIES, (member.partition, IndexEntry(key, member.caption, key, key, 1, 1, member.caption, 1))
    )
    yield beam.pvalue.TaggedOutput(SINGLE, 1)


def singles_summary(count: int) -> dict:
    """The summary of ``count`` kept samples without duplicates."""
    hist = {"1": count} if count else {}
    summary = empty_summary()
    summary.update(
        samples=count,
        status={"kept": count} if count else {},
        image_groups=count,
        caption_groups=count,
        image_group_sizes=hist,
        caption_group_sizes=dict(hist),
    )
    return summary


class MergeSummaries(beam.CombineFn):
    """Per-component summaries -> the job's summary (:func:`merge_summaries`: an associative merge)."""

    def __init__(self, top_groups: int) -> None:
        self.top = top_groups

    def create_accumulator(self):
        return empty_summary()

    def add_input(self, acc, summary):
        return merge_summaries(acc, summary, self.top)

    def merge_accumulators(self, accs):
        accs = list(accs)
        out = accs[0]
        for acc in accs[1:]:
            out = merge_summaries(out, acc, self.top)
        return out

    def extract_output(self, acc):
        return acc


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
                for record in read_shard(stream, shard, self.cfg.io.max_pixels, **io_limits(self.cfg)):
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
    index_info: dict | None = None,
    reference_entries: int = 0,
    rejected_samples: list[dict] | None = None,
    run: dict | None = None,
) -> dict:
    """Totals, the accounting invariant, report.json and report.html. Raises when samples went missing."""
    fs = BeamFileOps()
    total: Counter = Counter()
    for c in counts:
        total.update(c)
    summary = dict(summaries[0]) if summaries else {}
    summary["reference_entries"] = reference_entries
    summary["index_entries"] = (index_info or {}).get("count", 0)
    summary["index_partitions"] = (index_info or {}).get("partitions", 0)
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
        "rejected_samples": list(rejected_samples or []),
        "rejected_total": by_status.get("rejected", 0),
        "manifest": "manifest/*.parquet",  # beside report.json: the same bytes whatever the output path
        "run": run or {},
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
