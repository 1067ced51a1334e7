"""A decision for people: the markdown report and the plot of a decision record.

Kept apart from the record so reading or storing a record does not import matplotlib; the plot's
imports stay inside the function for the same reason.
"""

from __future__ import annotations

from hotswap.components.decision.record import DecisionRecord, pct


def _shares(shares: dict[str, float] | None) -> str:
    if not shares:
        return ""
    return ": " + ", ".join(f"v{v} {100 * x:.1f} %" for v, x in shares.items())


def decision_markdown(record: DecisionRecord) -> str:
    """A human-readable report: the verdict, its reasons, and the table of options."""
    cfg = record.config
    chosen = record.mode + (
        f" (f = {record.fraction:.3f})"
        if record.mode == "partial" or (record.mode == "transform" and record.fraction)
        else ""
    )
    lines = [
        f"# Backfill decision: **{chosen}**",
        "",
        f"- models: {record.old_model_version or '?'} → {record.new_model_version or '?'}; "
        f"codebooks: {record.old_codebook_version or '?'} → {record.new_codebook_version or '?'}",
        f"- blessed: {'yes' if record.blessed else 'no'}; target: {cfg.metric} ≥ {pct(cfg.quality_target)} "
        f"of full backfill ({record.reference_quality:.4f}); quality judged "
        f"{'as served (DPQ codes)' if cfg.quantized else 'on float features'}, validation split",
        f"- gallery: {record.gallery_items} items; measured cost per item: extract "
        f"{1e3 * record.cost.extract_seconds_per_item:.3f} ms, "
        f"encode {1e3 * record.cost.encode_seconds_per_item:.4f} ms "
        f"({record.cost.device}, sample {record.cost.sample_size})",
        *(
            [
                f"- live system as served (champion queries vs the validation gallery composed like the "
                f"live one{_shares(record.live_shares)}): {cfg.metric} {record.live_quality[cfg.metric]:.4f}"
                + (f"; policy forced: {cfg.policy}" if cfg.policy != "auto" else "")
            ]
            if record.live_quality
            else []
        ),
        f"- promotable: {'yes' if record.promotable else 'no'} — "
        f"{record.promotable_reason or 'not assessed (recorded before promotability)'}",
        f"- gallery: {record.gallery_state}",
        "",
        "Reasons:",
        *[f"- {reason}" for reason in record.reasons],
        "",
        f"| option | fraction | {cfg.metric} | float {cfg.metric} | top1 | relative | extract | encode "
        "| est. seconds | meets target | chosen | reason |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|:---:|---|",
    ]
    for o in record.options:
        is_chosen = o.mode == record.mode and o.fraction == record.fraction
        lines.append(
            f"| {o.mode} | {o.fraction:.3f} | {o.quality[cfg.metric]:.4f} "
            f"| {o.float_quality[cfg.metric]:.4f} | {o.quality.get('top1', float('nan')):.4f} "
            f"| {pct(o.relative_quality)} | {o.items_to_extract} "
            f"| {o.items_to_encode} | {o.estimated_seconds:.2f} | {'yes' if o.meets_target else 'no'} "
            f"| {'**←**' if is_chosen else ''} | {o.reason} |"
        )
    return "\n".join(lines) + "\n"


def decision_plot_png(record: DecisionRecord, dpi: int = 100) -> bytes:
    """Left: the backfill curve (quality as served vs share re-extracted), every option marked and
    the chosen one ringed, the target as a line. Right: each option's estimated seconds."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metric = record.config.metric
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    curve_ax, cost_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    fractions = record.curve.get("fractions", [])
    if fractions and metric in record.curve:
        curve_ax.plot(
            fractions,
            record.curve[metric],
            color="tab:blue",
            label=f"backfill curve ({record.config.ordering})",
        )
    target = record.config.quality_target * record.reference_quality
    curve_ax.axhline(
        target,
        color="tab:red",
        linestyle="--",
        linewidth=1,
        label=f"target ({pct(record.config.quality_target)} of full)",
    )
    styles = {  # skip and requantize sit at the same x (nothing re-extracted): skip drawn hollow, larger
        "skip": {"marker": "o", "s": 110, "facecolors": "none", "edgecolors": "tab:purple", "linewidths": 2},
        "requantize": {"marker": "s", "s": 40, "color": "tab:orange"},
        "partial": {"marker": ".", "s": 40, "color": "tab:green"},
        "transform": {"marker": "^", "s": 30, "color": "tab:cyan"},
        "full": {"marker": "D", "s": 40, "color": "tab:red"},
    }
    for mode, style in styles.items():
        opts = [o for o in record.options if o.mode == mode]
        if opts:
            curve_ax.scatter(
                [o.fraction for o in opts], [o.quality[metric] for o in opts], label=mode, zorder=3, **style
            )
    chosen = record.chosen_option
    if chosen is not None:
        curve_ax.scatter(
            [chosen.fraction],
            [chosen.quality[metric]],
            s=220,
            facecolors="none",
            edgecolors="black",
            linewidths=2,
            zorder=4,
            label=f"chosen: {record.mode}",
        )
    curve_ax.set_xlabel("share of the gallery re-extracted")
    curve_ax.set_ylabel(f"{metric} as served (validation)")
    curve_ax.set_title("quality of each option")
    curve_ax.legend(fontsize=7, loc="lower right")
    labels = [
        f"{o.fraction:.0%}"
        if o.mode == "partial"
        else f"t+{o.fraction:.0%}"
        if o.mode == "transform" and o.fraction
        else o.mode
        for o in record.options
    ]
    colours = [
        "black" if o is chosen else ("tab:green" if o.meets_target and o.eligible else "tab:gray")
        for o in record.options
    ]
    cost_ax.bar(range(len(labels)), [o.estimated_seconds for o in record.options], color=colours)
    cost_ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
    cost_ax.set_ylabel(f"estimated seconds ({record.gallery_items:,} items)")
    cost_ax.set_title("cost (black: chosen, green: meets target)")
    fig.suptitle(f"backfill decision v{record.new_model_version or '?'}: {record.mode}")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
