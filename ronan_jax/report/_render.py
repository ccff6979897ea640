"""`render_report`: rows + profile + run metadata -> one self-contained HTML file."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from ronan_jax.attribution.verdicts import ERROR
from ronan_jax.report._images import Thumb, load_evidence
from ronan_jax.report._plots import calibrated_loss_histogram, roc_plot
from ronan_jax.report._summary import (
    Summary,
    compute_summary,
    finite_or_none,
    label_key,
    roc_curve,
)
from ronan_jax.results.store import checked_row, escape_text

_TEMPLATES = Path(__file__).resolve().parent / "templates"
_CSS_PX_PER_INCH = 96


@dataclass(frozen=True)
class _Figure:
    uri: str
    width_px: int
    caption: str


@dataclass(frozen=True)
class _Entry:
    """One image in a gallery (most / least belonging)."""

    rank: int
    path: str
    member: str
    verdict: str
    label: bool | None
    loss: float | None
    ref_loss: float | None
    calibrated_loss: float | None
    z: float | None
    p_value: float | None
    thumbs: dict[str, Thumb]
    evidence_note: str | None
    class_label: int | None = None  # a class-conditional model: the class it was judged with


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(_TEMPLATES)),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["num"] = _fmt_num
    env.filters["pct"] = _fmt_pct
    env.filters["meta"] = _fmt_meta
    return env


def _fmt_num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "\u2014"
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "\u221e" if f > 0 else "-\u221e"
    return f"{f:.{digits}g}"


def _fmt_pct(value: float | None) -> str:
    return "\u2014" if value is None else f"{100.0 * value:.2f} %"


def _fmt_meta(value: Any) -> str:
    """A metadata value as text: strings as-is, everything else as compact sorted JSON."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def _profile_view(profile: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if profile is None:
        return None
    mu = finite_or_none(profile.get("mu"))
    sigma = finite_or_none(profile.get("sigma"))
    g = finite_or_none(profile.get("critical_value"))
    threshold = mu + g * sigma if None not in (mu, sigma, g) else None
    losses = [
        f
        for f in (finite_or_none(v) for v in profile.get("calibrated_losses") or [])
        if f is not None
    ]
    model = profile.get("model") or {}
    reference = profile.get("reference")
    return {
        "mu": mu,
        "sigma": sigma,
        "n": profile.get("n"),
        "alpha": profile.get("alpha"),
        "critical_value": g,
        "threshold": threshold,
        "calibrated_losses": losses,
        "model": model if isinstance(model, Mapping) else {"name": model},
        "reference": reference
        if isinstance(reference, Mapping) or reference is None
        else {"name": reference},
        "config": profile.get("config"),
        "extra": {
            k: v
            for k, v in profile.items()
            if k
            not in {
                "mu",
                "sigma",
                "n",
                "alpha",
                "critical_value",
                "calibrated_losses",
                "model",
                "reference",
                "config",
                "losses",  # per-sample lists: summarised by the histogram, not printed
                "ref_losses",
            }
            and not isinstance(v, list | tuple)
        },
    }


def _consistency_notes(rows: list[Mapping[str, Any]], prof: dict[str, Any] | None) -> list[str]:
    """Warn when the rows were evidently tested against another profile than the one shown."""
    if prof is None:
        return []
    notes = []
    g = prof["critical_value"]
    row_g = {f for f in (finite_or_none(r.get("critical_value")) for r in rows) if f is not None}
    if g is not None and any(abs(v - g) > 1e-6 * max(1.0, abs(g)) for v in row_g):
        shown = ", ".join(f"{v:.6g}" for v in sorted(row_g)[:5])
        notes.append(f"rows were tested with critical value(s) {shown}, the profile's is {g:.6g}")
    mu, sigma = prof["mu"], prof["sigma"]
    if mu is not None and sigma:
        worst = 0.0
        for r in rows:
            c, z = finite_or_none(r.get("calibrated_loss")), finite_or_none(r.get("z"))
            if c is not None and z is not None:
                worst = max(worst, abs((c - mu) / sigma - z) / max(1.0, abs(z)))
        if worst > 1e-5:
            notes.append(
                "the rows' z-scores do not match (calibrated loss - mu) / sigma of this profile "
                f"(largest relative difference {worst:.3g}): they were tested against another one"
            )
    return notes


def _profile_notes(profile: Mapping[str, Any] | None, prof: dict[str, Any] | None) -> list[str]:
    """The profile's own warnings: failed inversions inflating its threshold, and losses far
    from the normal sample Grubbs' test assumes."""
    if profile is None or prof is None or prof["threshold"] is None or prof["alpha"] is None:
        return []
    from ronan_jax.attribution.profile import failed_inversion_note, normality_note

    losses = profile.get("calibrated_losses") or []
    notes = [failed_inversion_note(losses, profile.get("trimmed") or [], prof["alpha"],
                                   prof["threshold"]),
             normality_note(losses)]
    return [n.rstrip(".") for n in notes if n is not None]  # the page adds the full stop


def _histogram(
    ok_rows: list[Mapping[str, Any]],
    labels: Mapping[str, bool] | None,
    prof: dict[str, Any] | None,
) -> _Figure | None:
    groups: dict[str, list[float]] = {}
    names = ("belonging", "non-belonging", "unlabelled")
    for name in names:
        groups[name] = []
    for row in ok_rows:
        loss = finite_or_none(row.get("calibrated_loss"))
        if loss is None:
            continue
        if labels is None:
            group = row["verdict"]
        else:
            label = labels.get(label_key(row))
            group = "unlabelled" if label is None else ("belonging" if label else "non-belonging")
        groups[group].append(loss)
    if prof is None:
        drawn = calibrated_loss_histogram(groups, None, None, None, None, None)
    else:
        drawn = calibrated_loss_histogram(
            groups,
            prof["calibrated_losses"],
            prof["mu"],
            prof["sigma"],
            prof["threshold"],
            prof["critical_value"],
        )
    if drawn is None:
        return None
    uri, log = drawn
    by = "true label" if labels is not None else "verdict"
    caption = f"Calibrated losses of the audited images (coloured by {by})"
    if prof is None:
        caption += "; no profile given, so no belonging distribution or threshold to compare with"
    else:
        caption += " against the model's belonging profile and its Grubbs threshold"
    caption += "; log-scaled x axis, the losses span decades." if log else "."
    return _Figure(uri=uri, width_px=round(7.5 * _CSS_PX_PER_INCH), caption=caption)


def _roc(
    ok_rows: list[Mapping[str, Any]], labels: Mapping[str, bool], summary: Summary
) -> _Figure | None:
    losses, truth = [], []
    for row in ok_rows:
        key = label_key(row)
        loss = finite_or_none(row.get("calibrated_loss"))
        if key in labels and loss is not None:
            losses.append(loss)
            truth.append(bool(labels[key]))
    curve = roc_curve(np.asarray(losses), np.asarray(truth, dtype=bool))
    if curve is None or summary.auc is None or summary.confusion is None:
        return None
    fpr, tpr, _ = curve
    c = summary.confusion
    point = None
    if c.tpr is not None and c.tnr is not None:
        point = (1.0 - c.tnr, c.tpr)
    uri = roc_plot(fpr, tpr, summary.auc, point)
    return _Figure(
        uri=uri,
        width_px=round(4.2 * _CSS_PX_PER_INCH),
        caption="ROC of \u201clower calibrated loss = belonging\u201d; the dot is the Grubbs verdicts.",
    )


def _entries(
    ranked: list[Mapping[str, Any]],
    labels: Mapping[str, bool] | None,
    evidence_root: str | os.PathLike[str] | None,
) -> list[_Entry]:
    out = []
    for i, row in enumerate(ranked, start=1):
        thumbs: dict[str, Thumb] = {}
        note = None
        evidence = row.get("evidence_path")
        if not evidence:
            note = "no evidence saved"
        else:
            try:
                thumbs = load_evidence(evidence, evidence_root)
            except (OSError, ValueError) as exc:
                note = f"evidence unavailable: {type(exc).__name__}: {exc}"
        label = None if labels is None else labels.get(label_key(row))
        out.append(
            _Entry(
                rank=i,
                path=str(row["path"]),
                member=str(row.get("member") or ""),
                verdict=str(row["verdict"]),
                label=None if label is None else bool(label),
                loss=finite_or_none(row.get("loss")),
                ref_loss=finite_or_none(row.get("ref_loss")),
                calibrated_loss=finite_or_none(row.get("calibrated_loss")),
                z=finite_or_none(row.get("z")),
                p_value=finite_or_none(row.get("p_value")),
                thumbs=thumbs,
                evidence_note=note,
                class_label=row.get("class_label") if isinstance(row.get("class_label"), int) else None,
            )
        )
    return out


def render_report(
    rows: Iterable[Mapping[str, Any]],
    profile: Mapping[str, Any] | None,
    run_meta: Mapping[str, Any],
    labels: Mapping[str, bool] | None = None,
    *,
    out_path: str | os.PathLike[str],
    k: int = 8,
    evidence_root: str | os.PathLike[str] | None = None,
    title: str | None = None,
    max_error_rows: int = 500,
) -> Path:
    """Write one self-contained HTML report of an audit and return its path.

    ``rows`` are result rows as the store gives them; ``profile`` the belonging profile used
    (or None); ``run_meta`` free-form metadata shown as a table; ``labels`` maps
    `label_key` (``path`` or ``path::member``) to True for belonging. ``k`` images with the
    lowest and ``k`` with the highest z are shown with their evidence; relative evidence paths
    are resolved against ``evidence_root``. Rows with verdict ``'error'`` are counted and
    listed (at most ``max_error_rows``) but enter no plot or metric. Plots and pictures are
    inlined as data URIs; every input string is HTML-escaped, and undecodable file-name bytes
    are written ``\\xNN`` as the store writes them. The file is replaced atomically.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    rows = [checked_row(row) for row in rows]  # an invalid row is listed as an error
    summary = compute_summary(rows, labels)
    prof = _profile_view(profile)
    ok_rows = [r for r in rows if r["verdict"] != ERROR]
    error_rows = [r for r in rows if r["verdict"] == ERROR]

    ranked = sorted(
        (r for r in ok_rows if finite_or_none(r.get("z")) is not None),
        key=lambda r: (finite_or_none(r.get("z")), label_key(r)),
    )
    most = ranked[:k]
    least = ranked[len(most) :][::-1][:k]

    figures = []
    hist = _histogram(ok_rows, labels, prof)
    if hist is not None:
        figures.append(hist)
    if labels is not None:
        roc = _roc(ok_rows, labels, summary)
        if roc is not None:
            figures.append(roc)

    context = {
        "title": title or "RONAN origin attribution report",
        "generated": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "run_meta": list(run_meta.items()),
        "summary": summary,
        "profile": prof,
        "notes": _consistency_notes(ok_rows, prof) + _profile_notes(profile, prof),
        "errors": [
            {
                "path": str(r["path"]),
                "member": str(r.get("member") or ""),
                "kind": r.get("error_kind") or "",
                "message": r.get("error") or "",
            }
            for r in error_rows[:max_error_rows]
        ],
        "errors_left_out": max(0, len(error_rows) - max_error_rows),
        "figures": figures,
        "k": k,
        "most": _entries(most, labels, evidence_root),
        "least": _entries(least, labels, evidence_root),
        "n_unranked": len(ok_rows) - len(ranked),
    }
    html = _environment().get_template("report.html.j2").render(**context)

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(escape_text(html))  # undecodable file-name bytes as \xNN, as stored
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the report from its readers
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
