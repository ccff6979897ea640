"""HTML report: the numbers (compute_summary, AUC, ROC) and the rendered, self-contained file."""

from __future__ import annotations

import base64
import io
import itertools
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ronan_jax.report import (
    Confusion,
    auc_from_losses,
    compute_summary,
    label_key,
    render_report,
    roc_curve,
)

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
SCRIPT_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
IMG_ESCAPED = "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;"


def _row(path, verdict, cal=None, *, member="", z=None, evidence=None, error_kind=None, error=None):
    ok = verdict != "error"
    return {
        "path": path,
        "member": member,
        "sha256": "0" * 64,
        "loss": cal * 0.01 if ok and cal is not None else None,
        "ref_loss": 0.01 if ok else None,
        "calibrated_loss": cal if ok else None,
        "z": z if ok else None,
        "critical_value": 3.2095 if ok else None,
        "p_value": 0.5 if ok else None,
        "verdict": verdict,
        "error_kind": error_kind,
        "error": error,
        "evidence_path": evidence,
    }


def _hand_made():
    rows = [
        _row("a.png", "belonging", 0.5),  # TP
        _row("b.png", "belonging", 0.7),  # TP
        _row("c.png", "non-belonging", 2.0),  # FN
        _row("d.png", "belonging", 0.7),  # FP, ties with b across classes
        _row("e.png", "non-belonging", 3.0),  # TN
        _row("f.png", "non-belonging", 2.0),  # TN, ties with c across classes
        _row("t.tar", "belonging", 0.6, member="x.png"),  # TP, keyed path::member
        _row("g.png", "non-belonging", None),  # TN, no loss: out of the AUC
        _row("err.png", "error", error_kind="decode", error="truncated"),  # counted only
        _row("u.png", "non-belonging", 5.0),  # no label
    ]
    labels = {
        "a.png": True,
        "b.png": True,
        "c.png": True,
        "d.png": False,
        "e.png": False,
        "f.png": False,
        "t.tar::x.png": True,
        "g.png": False,
        "err.png": True,
        "ghost.png": False,  # matches no row
    }
    return rows, labels


def _brute_force_auc(losses, labels):
    pos = [x for x, y in zip(losses, labels, strict=True) if y]
    neg = [x for x, y in zip(losses, labels, strict=True) if not y]
    wins = sum(1.0 if p < n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _tags(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(html)
    return parser.tags


def _decode_data_uri(uri: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(uri[len(prefix) :])))


def _profile(name="dcgan-cifar10"):
    rng = np.random.default_rng(0)
    losses = rng.normal(0.5, 0.1, size=20)
    mu, sigma = float(losses.mean()), float(losses.std(ddof=1))
    return {
        "mu": mu,
        "sigma": sigma,
        "n": 20,
        "alpha": 0.05,
        "critical_value": 2.5566,
        "calibrated_losses": losses.tolist(),
        "model": {"name": name, "param_hash": "abc123"},
        "reference": {"name": "vae-cifar10", "param_hash": "def456"},
        "config": {"steps": 1500, "restarts": 8, "lr": 0.1, "metric": "mse"},
    }


def _evidence(path: Path, seed: int, size: int = 8) -> str:
    rng = np.random.default_rng(seed)
    image = rng.random((size, size, 3), dtype=np.float32)
    recon = np.clip(image + 0.05 * rng.standard_normal(image.shape), 0, 1).astype(np.float32)
    np.savez(path, image=image, reconstruction=recon)
    return str(path)


def _scored_rows(tmp_path: Path, n: int = 6, *, evidence: bool = True):
    prof = _profile()
    rows = []
    for i in range(n):
        cal = 0.15 * 2.0**i  # threshold mu + G sigma is about 0.75: the first 3 belong
        z = (cal - prof["mu"]) / prof["sigma"]
        verdict = "belonging" if z < prof["critical_value"] else "non-belonging"
        ev = _evidence(tmp_path / f"ev{i}.npz", i) if evidence else None
        rows.append(_row(f"img{i}.png", verdict, cal, z=z, evidence=ev))
    return rows, prof


# -- numbers ----------------------------------------------------------------------------------


def test_image_key_is_path_or_path_and_member():
    assert label_key({"path": "dir/a.png", "member": ""}) == "dir/a.png"
    assert label_key({"path": "dir/a.png"}) == "dir/a.png"
    assert label_key({"path": "s.tar", "member": "x/b.png"}) == "s.tar::x/b.png"


def test_compute_summary_gives_exact_confusion_accuracy_and_auc_on_hand_made_set():
    rows, labels = _hand_made()
    s = compute_summary(rows, labels)
    assert s.n_rows == 10
    assert s.counts == {"belonging": 4, "non-belonging": 5, "error": 1}
    assert s.error_kinds == {"decode": 1}
    assert s.confusion == Confusion(tp=3, fp=1, fn=1, tn=3)
    assert s.accuracy == 0.75
    assert (s.confusion.tpr, s.confusion.tnr, s.confusion.precision) == (0.75, 0.75, 0.75)
    assert (s.n_labelled, s.n_positive, s.n_negative) == (8, 4, 4)
    assert (s.n_unlabelled, s.n_labels_unmatched, s.n_no_loss, s.n_auc) == (1, 1, 1, 7)
    # Pairs (belonging, non-belonging) with the belonging loss lower, ties 1/2: 10 of 12.
    assert s.auc == pytest.approx(10 / 12, abs=1e-15)
    cal = [0.5, 0.7, 2.0, 0.7, 3.0, 2.0, 0.6]
    truth = [True, True, True, False, False, False, True]
    assert s.auc == pytest.approx(_brute_force_auc(cal, truth), abs=1e-15)


def test_compute_summary_without_labels_counts_only():
    rows, _ = _hand_made()
    s = compute_summary(rows)
    assert s.counts == {"belonging": 4, "non-belonging": 5, "error": 1}
    assert not s.labelled
    assert s.confusion is None and s.accuracy is None and s.auc is None


def test_compute_summary_counts_an_unknown_verdict_as_an_invalid_row_error():
    s = compute_summary([{"path": "a.png", "verdict": "maybe"}])
    assert s.counts == {"belonging": 0, "non-belonging": 0, "error": 1}
    assert s.error_kinds == {"invalid-row": 1}


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_brute_force_pairwise_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 40))
    losses = rng.integers(0, 6, size=n).astype(np.float64)  # few values: many ties
    labels = rng.random(n) < 0.5
    labels[0], labels[1] = True, False
    auc = auc_from_losses(losses, labels)
    assert auc == pytest.approx(_brute_force_auc(losses.tolist(), labels.tolist()), abs=1e-12)


def test_auc_extremes_and_single_class():
    assert auc_from_losses([0.1, 0.2, 5.0, 6.0], np.array([True, True, False, False])) == 1.0
    assert auc_from_losses([5.0, 6.0, 0.1, 0.2], np.array([True, True, False, False])) == 0.0
    assert auc_from_losses([1.0, 1.0, 1.0], np.array([True, False, False])) == 0.5
    assert auc_from_losses([1.0, 2.0], np.array([True, True])) is None
    assert roc_curve([1.0, 2.0], np.array([False, False])) is None


def test_roc_curve_runs_corner_to_corner_and_its_area_is_the_auc():
    rng = np.random.default_rng(7)
    losses = rng.integers(0, 8, size=50).astype(np.float64)
    labels = rng.random(50) < 0.4
    fpr, tpr, thresholds = roc_curve(losses, labels)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert thresholds.size == np.unique(losses).size + 1
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(auc_from_losses(losses, labels), abs=1e-12)


# -- HTML -------------------------------------------------------------------------------------


def test_report_is_written_self_contained_and_shows_counts_and_metrics(tmp_path):
    rows, prof = _scored_rows(tmp_path)
    rows.append(_row("broken.png", "error", error_kind="decode", error="cannot identify image"))
    labels = {f"img{i}.png": i < 3 for i in range(6)}
    meta = {"model": "dcgan-cifar10", "settings": {"steps": 1500}, "db": str(tmp_path / "r.db")}
    out = render_report(rows, prof, meta, labels, out_path=tmp_path / "sub" / "report.html")

    assert out == tmp_path / "sub" / "report.html" and out.is_file()
    html = out.read_text(encoding="utf-8")
    s = compute_summary(rows, labels)
    assert s.counts == {"belonging": 3, "non-belonging": 3, "error": 1}
    for verdict, count in s.counts.items():
        assert f'<div class="n">{count}</div><div class="l">{verdict}</div>' in html
    c = s.confusion
    assert f"TP {c.tp}" in html and f"FP {c.fp}" in html
    assert f"FN {c.fn}" in html and f"TN {c.tn}" in html
    assert f"{100 * s.accuracy:.2f} %" in html and f"{s.auc:.4g}" in html
    assert "cannot identify image" in html and "broken.png" in html

    tags = _tags(html)
    names = {t for t, _ in tags}
    assert not names & {"script", "link", "iframe", "object", "embed", "base"}
    assert "http://" not in html and "https://" not in html
    for _, attrs in tags:
        for attr in ("src", "href", "srcset", "data"):
            if attr in attrs:
                assert (attrs[attr] or "").startswith("data:image/png;base64,"), attrs[attr]
    pictures = [a["src"] for t, a in tags if t == "img"]
    # histogram + ROC + (image, reconstruction) for 6 scored images, each shown once
    assert len(pictures) == 2 + 2 * 6
    for uri in pictures:
        _decode_data_uri(uri).load()


def test_hostile_file_names_and_strings_appear_only_escaped(tmp_path):
    prof = _profile(name=SCRIPT)
    rows = [
        _row(SCRIPT + ".png", "belonging", 0.5, z=-0.5, member=IMG),
        _row(IMG + ".png", "non-belonging", 9.0, z=40.0),
        _row("x" + SCRIPT, "error", error_kind=IMG, error=f"bad file {SCRIPT} {IMG}"),
    ]
    labels = {f"{SCRIPT}.png::{IMG}": True, f"{IMG}.png": False}
    meta = {SCRIPT: IMG, "settings": {"note": SCRIPT}}
    html = render_report(rows, prof, meta, labels, out_path=tmp_path / "r.html").read_text()

    assert SCRIPT not in html and IMG not in html
    assert "<script" not in html.lower() and "<img src=x" not in html
    assert SCRIPT_ESCAPED in html and IMG_ESCAPED in html
    tags = _tags(html)
    assert not any(t == "script" for t, _ in tags)
    assert not any("onerror" in attrs for _, attrs in tags)


def test_report_without_labels_profile_or_evidence(tmp_path):
    rows, _ = _scored_rows(tmp_path, evidence=False)
    html = render_report(rows, None, {}, out_path=tmp_path / "r.html").read_text()
    assert "No profile given." in html and "No run metadata given." in html
    assert "Accuracy against labels" not in html
    assert html.count("no evidence saved") == 6
    img_tags = [a for t, a in _tags(html) if t == "img"]
    assert len(img_tags) == 1  # the histogram only: no ROC, no thumbnails


def test_report_with_only_error_rows(tmp_path):
    rows = [_row(f"e{i}.png", "error", error_kind="too_large", error="too big") for i in range(3)]
    out = render_report(
        rows, _profile(), {"model": "m"}, {"e0.png": True}, out_path=tmp_path / "r.html"
    )
    html = out.read_text()
    assert '<div class="n">3</div><div class="l">error</div>' in html
    assert '<div class="n">0</div><div class="l">belonging</div>' in html
    assert html.count("too big") == 3 and "too_large: 3" in html.replace("</span>", "")
    assert "No scored images." in html
    s = compute_summary(rows, {"e0.png": True})
    assert s.confusion == Confusion(0, 0, 0, 0) and s.accuracy is None and s.auc is None


@pytest.mark.parametrize("losses", [[0.8], [0.8, 0.8, 0.8]])
def test_report_handles_a_single_or_all_equal_calibrated_losses(tmp_path, losses):
    rows = [_row(f"i{i}.png", "belonging", c, z=0.0) for i, c in enumerate(losses)]
    for prof in (None, {**_profile(), "calibrated_losses": [0.8] * 4, "sigma": 0.0}):
        html = render_report(rows, prof, {}, out_path=tmp_path / "r.html").read_text()
        assert sum(1 for t, _ in _tags(html) if t == "img") == 1


def test_gallery_ranks_by_z_and_splits_most_from_least_belonging(tmp_path):
    rows, prof = _scored_rows(tmp_path, n=5, evidence=False)
    rows = rows[::-1]  # input order must not matter
    html = render_report(rows, prof, {}, out_path=tmp_path / "r.html", k=2).read_text()
    most = html.split("Most belonging", 1)[1].split("Least belonging", 1)[0]
    least = html.split("Least belonging", 1)[1].split("<h2>Errors", 1)[0]
    assert most.index("img0.png") < most.index("img1.png") and "img2.png" not in most
    assert least.index("img4.png") < least.index("img3.png") and "img2.png" not in least


def test_thumbnails_are_nearest_neighbour_upscaled_and_bad_evidence_is_listed(tmp_path):
    rows, prof = _scored_rows(tmp_path, n=2)
    rows[1]["evidence_path"] = str(tmp_path / "missing.npz")
    html = render_report(rows, prof, {}, out_path=tmp_path / "r.html").read_text()
    assert "evidence unavailable" in html
    thumbs = [a["src"] for t, a in _tags(html) if t == "img" and "img0.png" in (a.get("alt") or "")]
    assert len(thumbs) == 2
    with np.load(rows[0]["evidence_path"]) as npz:
        expected = np.round(npz["image"] * 255).astype(np.uint8)
    shown = np.asarray(_decode_data_uri(thumbs[0]).convert("RGB"))
    assert shown.shape == (128, 128, 3)  # 8 px upscaled 16x
    assert np.array_equal(shown[::16, ::16], expected)
    assert np.array_equal(shown, np.repeat(np.repeat(expected, 16, axis=0), 16, axis=1))


def test_relative_evidence_paths_resolve_against_evidence_root(tmp_path):
    rows, prof = _scored_rows(tmp_path, n=1)
    rows[0]["evidence_path"] = "ev0.npz"
    html = render_report(
        rows, prof, {}, out_path=tmp_path / "r.html", evidence_root=tmp_path
    ).read_text()
    assert "evidence unavailable" not in html
    assert sum(1 for t, _ in _tags(html) if t == "img") == 1 + 2


def test_report_package_does_not_import_jax():
    code = "import sys, ronan_jax.report; assert 'jax' not in sys.modules, 'jax imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_report_warns_when_the_profile_holds_a_failed_inversion(tmp_path):
    rows, prof = _scored_rows(tmp_path, evidence=False)
    sound = render_report(rows, prof, {}, out_path=tmp_path / "sound.html").read_text()
    assert "probably failed" not in sound
    cal = prof["calibrated_losses"] + [40.0]
    failed = dict(prof, calibrated_losses=cal, mu=float(np.mean(cal)),
                  sigma=float(np.std(cal, ddof=1)), n=21)
    stats_without = dict(prof, calibrated_losses=cal)  # mu and sigma of the other 20
    html = render_report(rows, stats_without, {}, out_path=tmp_path / "w.html").read_text()
    assert "probably failed" not in html
    html = render_report(rows, failed, {}, out_path=tmp_path / "failed.html").read_text()
    assert "Warning: 1 of this profile&#39;s 21 calibrated losses (40)" in html
    assert "probably failed" in html and "measured losses).</div>" in html
    trimmed = dict(failed, trimmed=[20])
    html = render_report(rows, trimmed, {}, out_path=tmp_path / "trimmed.html").read_text()
    assert "probably failed" not in html  # already left out of mu and sigma


def test_report_notes_a_profile_far_from_normal(tmp_path):
    rows, prof = _scored_rows(tmp_path, evidence=False)
    cal = list(np.random.default_rng(3).normal(1.0, 0.05, 20))
    normal = dict(prof, calibrated_losses=cal, mu=float(np.mean(cal)), sigma=float(np.std(cal, ddof=1)))
    html = render_report(rows, normal, {}, out_path=tmp_path / "n.html").read_text()
    assert "far from normal" not in html
    skewed = [*cal[:19], 9.0]  # one far tail value: Shapiro-Wilk W ~0.26
    far = dict(prof, calibrated_losses=skewed, mu=float(np.mean(skewed)),
               sigma=float(np.std(skewed, ddof=1)))
    html = render_report(rows, far, {}, out_path=tmp_path / "far.html").read_text()
    assert "far from normal (Shapiro-Wilk W = 0.2" in html
