"""The run report: PNG plots and an HTML page beside the outputs, from aggregates and a bounded sample."""

from __future__ import annotations

import html
import io
import json
import textwrap

SCATTER_SAMPLE = 5000
SPECTRUM_SHOWN = 100
SCATTER_MARKERS = ("o", "^", "s", "D", "v")
BAR_LABEL_WIDTH = 40


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def explained_variance_plot(spectrum: list[float], k: int, target: float | None) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    shown = min(len(spectrum), max(SPECTRUM_SHOWN, k + 10))
    components = np.arange(1, shown + 1)
    cumulative = np.cumsum(spectrum)[:shown]
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.bar(components, spectrum[:shown], color="#9ecae1", label="per component")
    axis.plot(components, cumulative, color="#08519c", label="cumulative")
    axis.axvline(k, color="#d62728", linestyle="--", label=f"chosen k = {k}")
    if target:
        axis.axhline(target, color="#999999", linestyle=":", label=f"target {target:.0%}")
    axis.set(
        xlabel="principal component", ylabel="explained variance ratio", ylim=(0, 1.02), title="PCA explained variance"
    )
    axis.legend(loc="center right")
    data = _png(figure)
    plt.close(figure)
    return data


def scatter_plot(points: list[tuple[float, float, str | None]], total: int) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 6))
    labels = sorted({str(label) for _, _, label in points})
    # tab20's 20 colours, then the same colours with another marker: every class has its own look in the legend.
    colours = plt.get_cmap("tab20").colors
    for index, label in enumerate(labels):
        xs = [x for x, _, lab in points if str(lab) == label]
        ys = [y for _, y, lab in points if str(lab) == label]
        marker = SCATTER_MARKERS[index // len(colours) % len(SCATTER_MARKERS)]
        axis.scatter(xs, ys, s=9, color=colours[index % len(colours)], marker=marker, label=label, alpha=0.75)
    axis.set(xlabel="PC 1", ylabel="PC 2", title=f"First two components ({len(points)} of {total} images)")
    if len(labels) <= 30:
        axis.legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5))
    data = _png(figure)
    plt.close(figure)
    return data


def bar_plot(values: dict[str, float], title: str, xlabel: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Long labels (error reasons) wrapped, so the plot keeps the page's width instead of growing sideways.
    names = [textwrap.fill(str(name), BAR_LABEL_WIDTH) for name in values] or ["(none)"]
    heights = list(values.values()) or [0]
    lines = sum(name.count("\n") + 1 for name in names)
    figure, axis = plt.subplots(figsize=(7, max(2.0, 0.2 * lines + 0.1 * len(names) + 1)))
    axis.barh(names, heights, color="#6baed6")
    axis.invert_yaxis()
    axis.set(title=title, xlabel=xlabel)
    axis.tick_params(axis="y", labelsize=7)
    data = _png(figure)
    plt.close(figure)
    return data


def separation_section(probe: dict | None, weights: str) -> str:
    """Nearest-centroid accuracy on the full features and on the PCA features (featurize.probe)."""
    if not probe:
        return ""
    if "skipped" in probe:
        return f"<h2>Do the classes separate?</h2><p>Not measured: {html.escape(probe['skipped'])}.</p>"
    rows = "".join(
        f"<tr><td>{name}</td><td>{dimensions}</td><td>{100 * accuracy:.1f} %</td></tr>"
        for name, dimensions, accuracy in (
            ("full features", probe["dimensions_full"], probe["accuracy_full"]),
            (f"PCA, k = {probe['dimensions_pca']}", probe["dimensions_pca"], probe["accuracy_pca"]),
        )
    )
    return (
        "<h2>Do the classes separate?</h2>"
        f"<p>{html.escape(probe['method'])}: {probe['held_out_images']} of {probe['sample_images']} sampled images"
        f" held out, {probe['classes']} classes (chance {100 * probe['chance']:.1f} %), features of the weights"
        f" <code>{html.escape(weights)}</code>. The drop from the first row to the second is what k costs.</p>"
        f"<table><tr><th>features</th><th>dimensions</th><th>held-out accuracy</th></tr>{rows}</table>"
    )


def cost_section(cost: dict | None) -> str:
    """The cost estimate, part by part (featurize.cost; docs/costs.md says how it is computed)."""
    if not cost:
        return ""
    if cost.get("total_usd") is None:
        return f"<h2>Cost of this run</h2><p>unknown: {html.escape(cost.get('error', ''))}</p>"
    parts = cost["parts"]
    requests = parts["s3_requests"]
    credits = parts["cpu_credits"]
    rows = [
        (
            "instance",
            f"{parts['instance']['hours'] * 60:.1f} min of {parts['instance']['type']}"
            f" at ${parts['instance']['usd_per_hour']}/h",
            parts["instance"]["usd"],
        ),
        ("public IPv4 address", f"${parts['public_ipv4']['usd_per_hour']}/h", parts["public_ipv4"]["usd"]),
        (
            "CPU credits",
            f"{credits['mode']}: {credits.get('surplus_vcpu_hours', 0)} surplus vCPU-hours",
            credits["usd"],
        ),
        (
            "S3 requests",
            f"{requests.get('get', 0):,} GET, {requests.get('put', 0):,} PUT, {requests.get('list', 0):,} LIST",
            requests["usd"],
        ),
    ]
    body = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{html.escape(what)}</td><td>${usd:.4f}</td></tr>"
        for name, what, usd in rows
    )
    return (
        f"<h2>Cost of this run</h2><p>About ${cost['total_usd']:.4f}, priced as {html.escape(cost['basis'])}"
        f" (prices of {html.escape(cost['prices_date'])}, see docs/costs.md);"
        f" the outputs ({parts['s3_storage']['bytes']:,} bytes) cost ${cost['storage_usd_per_month']:.4f}"
        f" a month to keep.</p><table>{body}</table>"
    )


def render_html(manifest: dict, images: dict[str, str], errors_by_reason: dict[str, int]) -> str:
    counts, pca, timing = manifest["counts"], manifest["pca"], manifest["timing"]
    rows = "".join(
        f"<tr><td>{html.escape(str(key))}</td><td>{html.escape(json.dumps(value))}</td></tr>"
        for key, value in {**manifest["parameters"], **manifest["versions"]}.items()
    )
    reasons = (
        "".join(
            f"<tr><td>{html.escape(reason)}</td><td>{count}</td></tr>" for reason, count in errors_by_reason.items()
        )
        or "<tr><td colspan=2>no errors</td></tr>"
    )
    codes = "".join(
        f"<tr><td>{html.escape(code)}</td><td>{entry['images']}</td>"
        f"<td>{'yes' if entry['retryable'] else 'no'}</td><td>{html.escape(entry['hint'] or '')}</td></tr>"
        for code, entry in manifest.get("errors_by_code", {}).items()
    )
    codes_table = (
        "<h3>Errors S3 answered, and what to do</h3><table><tr><th>code</th><th>images</th>"
        f"<th>retried by a rerun</th><th>hint</th></tr>{codes}</table>"
        if codes
        else ""
    )
    figures = "".join(
        f'<figure><img src="{name}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for name, caption in images.items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fruitcloud run {html.escape(manifest["run_id"])}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto;padding:0 1em}}td,th{{padding:2px 8px}}
th{{text-align:left}}figure{{margin:1em 0}}img{{max-width:100%;height:auto}}</style></head><body>
<h1>Run {html.escape(manifest["run_id"])}</h1>
<p>{counts["inputs"]} images from {html.escape(manifest["input"])}: {counts["featurized"]} featurized,
{counts["errors"]} errors, {counts["ignored_non_images"]} non-image files ignored, {counts["classes"]} classes.
PCA keeps k = {pca["k"]} components ({100 * pca["explained_variance_at_k"]:.1f}% of the variance).
Wall time {timing["wall_seconds"]:.1f} s, {timing["images_per_second"]} images/s.</p>
<p>Outputs: {html.escape(manifest["output"])} (<a href="../manifest.json">manifest.json</a>, beside this
report's folder, lists them all).</p>
{figures}
{separation_section(pca.get("class_separation"), manifest["parameters"]["weights"])}
{cost_section(manifest.get("cost"))}
<h2>Errors by reason</h2><table><tr><th>reason</th><th>images</th></tr>{reasons}</table>
{codes_table}
<h2>Parameters and versions</h2><table>{rows}</table>
</body></html>
"""


def build_report(manifest: dict, pca_points: list, errors_by_reason: dict[str, int]) -> dict[str, bytes]:
    """Files of the report folder, by name."""
    stages = manifest["timing"]["stages_seconds"]
    files = {
        "explained_variance.png": explained_variance_plot(
            manifest["pca"]["explained_variance"], manifest["pca"]["k"], manifest["pca"]["target_variance"]
        ),
        "pca_scatter.png": scatter_plot(pca_points, manifest["counts"]["featurized"]),
        "class_counts.png": bar_plot(
            {str(k): v for k, v in manifest["counts"]["per_class"].items()}, "Images per class", "images"
        ),
        "stage_seconds.png": bar_plot(stages, "Wall time per stage", "seconds"),
        "errors_by_reason.png": bar_plot(errors_by_reason, "Errors by reason", "images"),
    }
    captions = {
        "explained_variance.png": "Explained variance, per component and cumulative; chosen k marked",
        "pca_scatter.png": "PC 1 vs PC 2, coloured by class (uniform sample)",
        "class_counts.png": "Featurized images per class",
        "stage_seconds.png": "Wall time per stage",
        "errors_by_reason.png": "Errors by reason",
    }
    files["report.html"] = render_html(manifest, captions, errors_by_reason).encode()
    return files
