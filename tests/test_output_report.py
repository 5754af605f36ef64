"""``rayformers report OUTPUT``: the figures a curator reads, checked against the Parquet itself.

One real classify run through the pipeline gives today's manifest (one model, no keep rule); a
copy of it is rewritten as a curation output (two models with prefixed columns, a keep rule,
``kept_rows`` / ``dropped_rows`` / ``models`` in the manifest) to exercise those fields. Every
number of the text, JSON and HTML reports is recomputed here from the Parquet files.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayformers.pipeline import cli, run
from rayformers.pipeline.keep_thresholds import Threshold, keep_thresholds
from rayformers.pipeline.output_report import ReportError, read_output_report
from rayformers.pipeline.report_html import render_html
from rayformers.pipeline.report_text import format_report

from model_test_utils import tiny_bert

TEXTS = [f"row {i}: " + "lorem ipsum dolor sit amet " * (i % 7) + ("good" if i % 3 else "bad") for i in range(90)]
POISON = [None, "", "   ", None]


def _read_parquet(out: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("part-*.parquet"))])


class PageParser(HTMLParser):
    """Every plot, bar, bin and threshold mark of a report page, and every address it points to."""

    def __init__(self):
        super().__init__()
        self.plots, self.addresses, self.tags = [], [], Counter()
        self.style = ""
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags[tag] += 1
        self.addresses += [v for k, v in attrs if k in ("src", "href", "xlink:href", "action", "data", "poster") and v]
        if tag == "svg" and "plot" in (a.get("class") or ""):
            self.plots.append({"kind": a["data-kind"], "column": a["data-column"], "bars": {}, "bins": [], "thresholds": []})
        elif tag == "rect" and a.get("class") == "bar":
            self.plots[-1]["bars"][a["data-label"]] = int(a["data-count"])
        elif tag == "rect" and a.get("class") == "bin":
            self.plots[-1]["bins"].append((float(a["data-start"]), float(a["data-end"]), int(a["data-count"])))
        elif tag == "line" and a.get("class") == "threshold":
            self.plots[-1]["thresholds"].append((a["data-op"], float(a["data-value"])))
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.style += data


def parse_page(text: str) -> PageParser:
    page = PageParser()
    page.feed(text)
    external = [a for a in page.addresses if a.startswith(("http:", "https:", "//"))]
    assert not external, f"the page fetches {external}"
    assert page.tags["script"] == 0 and page.tags["link"] == 0 and page.tags["img"] == 0 and page.tags["iframe"] == 0
    assert "url(" not in page.style and "@import" not in page.style
    return page


def bin_counts(values, bins) -> list[int]:
    """How many values fall in each ``(start, end, _)`` bin, the last one closed (numpy's rule)."""
    counts = []
    for i, (start, end, _) in enumerate(bins):
        last = i == len(bins) - 1
        counts.append(sum(1 for v in values if start <= v and (v <= end if last else v < end)))
    return counts


@pytest.fixture(scope="module")
def classify_output(ray_session, tmp_path_factory) -> Path:
    """A published output of a real classify run (today's manifest: no models/keep fields)."""
    root = tmp_path_factory.mktemp("report")
    model = tiny_bert(root / "clf", hidden=16, layers=1, head="BertForSequenceClassification", num_labels=3,
                      id2label={0: "low", 1: "mid", 2: "high"}, label2id={"low": 0, "mid": 1, "high": 2})
    inp = root / "in"
    inp.mkdir()
    texts = TEXTS + POISON
    pq.write_table(pa.table({"doc_id": [f"d{i:03d}" for i in range(len(texts))], "text": texts}),
                   inp / "part0.parquet", row_group_size=16)
    out = root / "out"
    report = run({"input": {"path": str(inp), "id_column": "doc_id"}, "model": {"path": str(model), "task": "classify"},
                  "output": {"path": str(out), "max_error_fraction": 0.2}})
    assert report.status == "succeeded" and report.errors == 4
    return out


def test_todays_classify_output_text_json_and_html_equal_the_parquet(classify_output, tmp_path, capsys):
    table = _read_parquet(classify_output)
    labels = Counter(v for v in table.column("label").to_pylist() if v is not None)
    scores = [v for v in table.column("score").to_pylist() if v is not None]
    errors = Counter(v for v in table.column("error").to_pylist() if v is not None)

    html_path = tmp_path / "report.html"
    assert cli.main(["report", str(classify_output), "--json", "--html", str(html_path)]) == cli.EXIT_OK
    data = json.loads(capsys.readouterr().out)
    assert data["exit_code"] == 0 and data["total_rows"] == 94 and data["sampled_rows"] == 94 and not data["sampled"]
    assert data["models"] == [{"name": "", "task": "classify", "model_type": "bert", "prediction_columns": ["label", "score", "num_tokens"]}]  # as the manifest lists them
    assert data["input_rows"] == 94 and data["error_rows"] == 4 and data["kept_rows"] == 90  # no keep rule: every scored row kept
    (dist,) = data["labels"]
    assert dist["column"] == "label" and dict(map(tuple, dist["counts"])) == labels and dist["missing"] == 4
    (hist,) = data["scores"]
    assert hist["values"] == 90 and sum(hist["counts"]) == 90 and hist["thresholds"] == []
    assert hist["edges"][0] == 0.0 and hist["edges"][-1] == 1.0  # softmax scores: the [0, 1] range
    bins = list(zip(hist["edges"], hist["edges"][1:], hist["counts"]))
    assert hist["counts"] == bin_counts(scores, bins)
    assert {e["reason"]: e["count"] for e in data["errors"]} == errors and data["errors_complete"]
    null = next(e for e in data["errors"] if e["reason"] == "text: text is null")
    assert null["examples"] == ["d090", "d093"]
    manifest = json.loads((classify_output / "_manifest.json").read_text())
    stages = {s["stage"]: s for s in data["stages"]}
    assert stages.keys() == manifest["report"]["stage_s"].keys()
    assert stages["model"]["rows_per_s"] == pytest.approx(94 / manifest["report"]["stage_s"]["model"])

    page = parse_page(html_path.read_text())
    assert [(p["kind"], p["column"]) for p in page.plots] == [("labels", "label"), ("scores", "score")]
    assert page.plots[0]["bars"] == labels
    assert [c for _, _, c in page.plots[1]["bins"]] == bin_counts(scores, page.plots[1]["bins"])

    assert cli.main(["report", str(classify_output)]) == cli.EXIT_OK
    text = capsys.readouterr().out
    assert "keep rule     none" in text and "labels: label" in text and "scores: score" in text
    assert f"{errors['text: text is null']}  text: text is null  e.g. d090, d093" in text
    for label, n in labels.items():
        assert any(line.split()[:2] == [label, str(n)] for line in text.splitlines()), label


def curation_output(source: Path, target: Path, row_group_size: int = 16) -> Path:
    """``source`` rewritten as a two-model curation output: ``quality_label`` / ``quality_score``
    (the run's classifier), ``topic_labels`` (a multi-label list) and a keep rule, with the
    manifest fields a multi-model run writes."""
    shutil.copytree(source, target)
    manifest = json.loads((target / "_manifest.json").read_text())
    for part in target.glob("part-*.parquet"):
        t = pq.read_table(part)
        n = t.num_rows
        topics = [None if t.column("error")[i].is_valid else (["science", "health"][: i % 3]) for i in range(n)]
        t = t.rename_columns(["quality_label" if c == "label" else "quality_score" if c == "score" else c
                              for c in t.column_names])
        t = t.append_column("topic_labels", pa.array(topics, pa.list_(pa.string())))
        pq.write_table(t, part, row_group_size=row_group_size)
    manifest.update(
        keep="quality_score >= 0.34 and topic_labels is not null and 'x<=1' != quality_label",
        kept_rows=70, dropped_rows=20,
        models=[{"name": "quality", "task": "classify", "model_type": "bert",
                 "prediction_columns": ["quality_label", "quality_score"]},
                {"name": "topic", "task": "classify", "model_type": "bert", "prediction_columns": ["topic_labels"]}],
    )
    (target / "_manifest.json").write_text(json.dumps(manifest))
    return target


def test_models_keep_rule_and_kept_counts_from_the_manifest(classify_output, tmp_path):
    out = curation_output(classify_output, tmp_path / "curated")
    table = _read_parquet(out)
    quality = Counter(v for v in table.column("quality_label").to_pylist() if v is not None)
    topics = Counter(x for v in table.column("topic_labels").to_pylist() if v for x in v)
    scores = [v for v in table.column("quality_score").to_pylist() if v is not None]

    report = read_output_report(str(out))
    assert (report.kept_rows, report.dropped_rows) == (70, 20) and report.keep.startswith("quality_score >= 0.34")
    assert [m.name for m in report.models] == ["quality", "topic"]
    assert [(d.column, d.model, d.how) for d in report.labels] == [("quality_label", "quality", "value"),
                                                                  ("topic_labels", "topic", "elements")]
    assert dict(report.labels[0].counts) == quality and dict(report.labels[1].counts) == topics
    assert report.labels[1].missing == sum(1 for v in table.column("topic_labels").to_pylist() if not v)
    (hist,) = report.scores
    assert hist.column == "quality_score" and hist.thresholds == [Threshold("quality_score", ">=", 0.34)]
    assert hist.passing == sum(1 for v in scores if v >= 0.34)

    page = parse_page(render_html(report))
    assert [(p["kind"], p["column"]) for p in page.plots] == [
        ("labels", "quality_label"), ("labels", "topic_labels"), ("scores", "quality_score")]
    assert page.plots[1]["bars"] == topics
    assert page.plots[2]["thresholds"] == [(">=", 0.34)]
    assert [c for _, _, c in page.plots[2]["bins"]] == bin_counts(scores, page.plots[2]["bins"])
    assert "<td>kept rows</td><td>70</td>" in render_html(report)
    text = format_report(report)
    assert "kept          70" in text and "dropped       20" in text
    marked = [line for line in text.splitlines() if "<- keep: quality_score >= 0.34" in line]
    assert len(marked) == 1 and marked[0].split("[")[1].split(",")[0].strip() == "0.34"  # the threshold is a bin edge


def test_zero_shot_lists_count_their_first_label_and_score(tmp_path):
    """A zero-shot row holds every candidate label, best first: the report counts the top one."""
    out = tmp_path / "zs"
    out.mkdir()
    labels = [["a", "b", "c"], ["b", "a", "c"], ["b", "c", "a"], None, ["c", "a", "b"], ["b", "a", "c"]]
    scores = [[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.9, 0.05, 0.05], None, [0.4, 0.35, 0.25], [0.6, 0.3, 0.1]]
    errors = [None, None, None, "text: text is empty", None, None]
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(6)], "labels": pa.array(labels, pa.list_(pa.string())),
                             "scores": pa.array(scores, pa.list_(pa.float64())), "error": pa.array(errors, pa.string())}),
                   out / "part-0.parquet", row_group_size=4)
    (out / "_manifest.json").write_text(json.dumps({"status": "succeeded", "task": "zero-shot-classify",
                                                    "output_files": [{"path": "part-0.parquet", "rows": 6}]}))
    (out / "_SUCCESS").write_text("")
    report = read_output_report(str(out))
    (dist,) = report.labels
    assert (dist.column, dist.how) == ("labels", "first") and dict(dist.counts) == {"b": 3, "a": 1, "c": 1}
    assert dist.missing == 1
    (hist,) = report.scores
    assert hist.values == 5 and hist.maximum == 0.9 and hist.minimum == 0.4
    page = parse_page(render_html(report))
    assert [(p["kind"], p["column"]) for p in page.plots] == [("labels", "labels"), ("scores", "scores")]
    assert [e.reason for e in report.errors] == ["text: text is empty"] and report.errors[0].examples == ["r3"]


def test_a_big_output_is_sampled_by_row_groups(classify_output, tmp_path):
    out = curation_output(classify_output, tmp_path / "curated", row_group_size=10)
    report = read_output_report(str(out), sample_rows=25)
    assert report.total_rows == 94 and report.sampled_rows == 25 and report.sampled
    for d in report.labels[:1]:
        assert sum(n for _, n in d.counts) + d.missing == 25
    assert report.scores[0].values + report.scores[0].missing == 25
    # The sample is whole row groups (the last one cut), in a seeded order: the same every time.
    again = read_output_report(str(out), sample_rows=25)
    assert again.labels[0].counts == report.labels[0].counts
    # Errors are read apart from the sample, from the row groups whose statistics show errors.
    assert sum(e.count for e in report.errors) == 4 and report.errors_complete
    few = read_output_report(str(out), sample_rows=2)
    assert few.error_rows_read == 2 and not few.errors_complete


def test_keep_thresholds_read_from_the_expression():
    found = keep_thresholds("quality_score >= 3 and 0.5 < emb_norm or topic in ['a>=1', \"b < 2\"] and not x == -1e-3")
    assert found == {"quality_score": [Threshold("quality_score", ">=", 3.0)],
                     "emb_norm": [Threshold("emb_norm", ">", 0.5)], "x": [Threshold("x", "==", -0.001)]}
    assert keep_thresholds(None) == {} and keep_thresholds("topic_label in ['science']") == {}


def test_a_path_that_is_not_a_published_output_is_refused(tmp_path, capsys):
    with pytest.raises(ReportError, match="no such output"):
        read_output_report(str(tmp_path / "missing"))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "_manifest.json").write_text("{}")
    assert cli.main(["report", str(tmp_path / "half"), "--json"]) == cli.EXIT_BAD_CONFIG
    captured = capsys.readouterr()
    assert json.loads(captured.out)["status"] == "refused" and "without _SUCCESS" in captured.err


BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def test_the_html_report_renders_in_headless_chromium(classify_output, tmp_path):
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        pytest.skip(f"no headless Chromium installed ({', '.join(BROWSERS)} not on PATH)")
    page = tmp_path / "report.html"
    assert cli.main(["report", str(classify_output), "--html", str(page)]) == cli.EXIT_OK
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", f"--screenshot={shot}",
                    "--window-size=1000,2000", page.as_uri()], check=True, timeout=120, capture_output=True)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, "a blank or failed screenshot"


def test_prediction_columns_are_recognised_with_or_without_the_model_prefix():
    from rayformers.pipeline.output_report import ModelColumns, plotted_columns

    schema = pa.schema([("edu_score", pa.float32()), ("label", pa.string()), ("top_k_labels", pa.list_(pa.string())),
                        ("topic_labels", pa.list_(pa.string()))])
    models = [ModelColumns("edu", "classify", "bert", ["edu_score"]),
              ModelColumns("plain", "classify", "bert", ["label", "top_k_labels"]),
              ModelColumns("topic", "zero-shot-classify", None, ["topic_labels", "topic_missing"])]
    labels, scores = plotted_columns(models, schema)
    assert labels == [("label", "plain", "value"), ("topic_labels", "topic", "first")]
    assert scores == [("edu_score", "edu", "value")]
