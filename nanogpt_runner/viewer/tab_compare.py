"""The Compare tab: curves, bars, what differs, the analysis (its conclusion first), seed groups and the swept
settings. A panel with nothing to show is not drawn: no curve no selected run logs, no time-to-target chart
without a target, no seed-group
table or band without a group of two runs or more, no settings panel when nothing was swept. Each bar chart
takes the page's width, so its legend (the runs' whole names) fits on its line; the swept settings are one
panel per swept key (viewer/swept.py), side by side."""

from __future__ import annotations

import gradio as gr

from nanogpt_runner.analysis.records import X_TITLES
from nanogpt_runner.viewer.curves import PLOTS, log_scaled, plot_title
from nanogpt_runner.viewer.dashboard import BARS, CompareView
from nanogpt_runner.viewer.swept import MAX_SWEPT_PANELS, STATUS_COLOURS, x_limits


def compare_tab() -> dict:
    """The tab's components by name (the caller wires them to the page's one update)."""
    with gr.Row():
        x_axis = gr.Radio(list(X_TITLES), value="step", label="x axis")
        smoothing = gr.Slider(0.0, 0.99, value=0.0, step=0.01, label="EMA smoothing (train curves)")
        log_y = gr.Checkbox(False, label="log10 loss")
        target = gr.Number(None, label="target val loss (time to target; empty or 0: none)")
    analysis = gr.Markdown(elem_classes=["analysis"], elem_id="analysis")
    plots = {name: gr.LinePlot(x="x", y="y", color="series", title=plot_title(name), x_title="step",
                               y_title=plot_title(name), color_title="run", tooltip="all", height=250,
                               elem_id=f"plot-{name}")
             for name in PLOTS}
    bars = {name: gr.BarPlot(x="run", y="value", color="run", title=title, x_title="", y_title=title,
                             y_lim=[0, None], x_axis_labels_visible=False, height=220, tooltip="all", color_title="run",
                             elem_id=f"bar-{name}", visible=name != "to_target")
            for name, (_, title) in BARS.items()}
    diff = gr.Dataframe(interactive=False, label="Config keys that differ between the selected runs", elem_id="diff")
    groups = gr.Dataframe(interactive=False, elem_id="seed-groups", visible=False,
                          label="Seed groups (two runs or more that differ only by train.seed, or share run.group)")
    seed_plot = gr.Plot(label="val loss by seed group: mean and min–max band", elem_id="seed-plot", visible=False)
    with gr.Row(elem_id="swept"):
        swept = [gr.ScatterPlot(x="value", y="objective", color="status", color_map=STATUS_COLOURS, tooltip="all",
                                height=300, visible=False, elem_id=f"swept-{i}") for i in range(MAX_SWEPT_PANELS)]
    with gr.Row():
        plot_csv = gr.Button("Download CSV of what each plot shows", elem_id="plot-csv")
        export = gr.Button("Export summary.csv + comparison.png of the selected runs")
        files = gr.File(label="Report files", file_count="multiple")
    return {"x": x_axis, "smoothing": smoothing, "log_y": log_y, "target": target, "plots": plots, "bars": bars,
            "diff": diff, "analysis": analysis, "groups": groups, "seed_plot": seed_plot,
            "swept": swept, "plot_csv": plot_csv, "export": export, "files": files}


def outputs(tab: dict) -> list:
    """The components ``updates`` fills, in its order."""
    return [*tab["plots"].values(), *tab["bars"].values(), tab["diff"], tab["analysis"], tab["groups"],
            tab["seed_plot"], *tab["swept"]]


def updates(view: CompareView, seen: dict, new_seen: dict, x: str, log_y: bool) -> list:
    """What to send for ``view``: curves (their axes retitled when they changed), bars (hidden when they have
    nothing to show), tables, the seed band only when it was drawn again (``seen`` holds what was sent), and a
    swept-settings panel per swept key."""
    axes = [x, bool(log_y)]
    retitle = seen.get("axes") != axes
    new_seen["axes"] = axes
    result = [gr.LinePlot(value=view.curves[name], visible=bool(view.curves[name].y.notna().any()),
                          **({"x_title": X_TITLES[x], "y_title": f"log10 {plot_title(name)}"
                              if log_y and log_scaled(name) else plot_title(name)} if retitle else {}))
              for name in PLOTS]  # a metric no selected run logs (bits per byte of an old run) is not drawn
    result += [gr.BarPlot(value=view.bars[name], visible=True) if name in view.bars else gr.BarPlot(visible=False)
               for name in BARS]  # runs in one order everywhere: one colour each
    result += [view.diff, view.analysis, gr.Dataframe(value=view.groups, visible=len(view.groups) > 0)]
    redrawn = seen.get("band") != view.figure_key
    result.append(gr.Plot(value=view.seed_plot, visible=view.seed_plot is not None) if redrawn else gr.skip())
    new_seen["band"] = view.figure_key
    result += [gr.ScatterPlot(value=panel.frame, title=f"{panel.key} against {panel.y_title}",
                              x_title=panel.x_title, y_title=panel.y_title, x_lim=x_limits(panel), visible=True)
               for panel in view.swept]
    result += [gr.ScatterPlot(visible=False) for _ in range(MAX_SWEPT_PANELS - len(view.swept))]
    return result
