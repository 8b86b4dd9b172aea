"""The curation report.html on hand-made report data (:func:`tests.report_samples.curate_report`): the kept
representative of each group, similarity scores on thumbnails, the rejected samples and the run facts."""

from __future__ import annotations

import re

from copyguard.curation.curate_report import REJECTED_SHOWN, render_report_html
from tests.report_samples import curate_report


def _section(page: str, title: str) -> str:
    start = page.index(f"<h2>{title}</h2>")
    end = page.find("<h2>", start + 1)
    return page[start : end if end > 0 else len(page)]


def test_group_thumbnails_mark_the_kept_member_and_show_similarity() -> None:
    report, thumbs = curate_report()
    groups = _section(render_report_html(report, thumbs), "Largest image-duplicate groups")
    figures = re.findall(r'<figure class="(\w*)">(.*?)</figure>', groups)
    assert [cls for cls, _ in figures] == ["", "kept", ""]
    assert '<span class="badge">kept</span>' in figures[1][1] and "sim" not in figures[1][1]
    assert '<span class="sim">sim 0.93</span>' in figures[0][1] and "sim 0.88" in figures[2][1]
    assert "a cat &lt;i&gt;on&lt;/i&gt; a mat" in figures[0][1]  # captions stay escaped


def test_kept_key_on_the_group_also_marks_the_member() -> None:
    report, thumbs = curate_report(full=False)
    group = report["summary"]["top_image_groups"][0]
    group["kept"] = "s/0003"
    page = render_report_html(report, thumbs)
    figures = re.findall(r'<figure class="(\w*)">', _section(page, "Largest image-duplicate groups"))
    assert figures == ["", "", "kept"]
    assert "kept representative not recorded" in _section(page, "Largest caption groups")


def test_rejected_samples_first_n_with_reasons_and_where_the_rest_are() -> None:
    report, thumbs = curate_report()
    report["rejected_samples"] = [
        {"key": f"s/{i:04d}", "reason": "corrupt_image", "detail": "<bad>", "shard": "raw/a.tar"}
        for i in range(REJECTED_SHOWN + 5)
    ]
    report["rejected_total"] = 900
    rejected = _section(render_report_html(report, thumbs), "Rejected samples")
    assert f"900 samples rejected; the first {REJECTED_SHOWN} are listed." in rejected
    assert rejected.count("<tr><td><code>s/") == REJECTED_SHOWN
    assert "&lt;bad&gt;" in rejected and "<bad>" not in rejected
    assert "out/manifest/*.parquet" in rejected


def test_rejected_section_without_a_sample_list_points_to_the_manifest() -> None:
    report, thumbs = curate_report(full=False)
    page = render_report_html(report, thumbs)
    rejected = _section(page, "Rejected samples")
    assert "2 samples rejected" in rejected and 'status "rejected"' in rejected and "manifest" in rejected
    assert '<p class="muted">not recorded</p>' in _section(page, "Run facts")


def test_run_facts_missing_cells_and_plurals() -> None:
    report, thumbs = curate_report()
    report["summary"]["caption_groups"] = 1
    page = render_report_html(report, thumbs)
    run = _section(page, "Run facts")
    assert "<th>copyguard_version</th><td>0.1.0</td>" in run and "raw/*.tar" in run and "ci-runner-1" in run
    assert "None" not in page and "<td>-</td>" in _section(page, "Rejected samples")  # empty detail
    assert "1 group</p>" in page and "1 groups" not in page and "2 groups</p>" in page
