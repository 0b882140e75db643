"""The Launch and Sample tabs: a form that starts nanogpt-run (checked by the runner first, page_policy's
allowlist), Stop, and text from a run's checkpoint in a child process. Every listener is private."""

from __future__ import annotations

import html

import gradio as gr

from nanogpt_runner.config.schema import PRECISIONS
from nanogpt_runner.viewer.dashboard import Dashboard, markdown_text
from nanogpt_runner.viewer.launcher import Launcher
from nanogpt_runner.viewer.page_policy import FORM_FIELDS, LaunchError, presets
from nanogpt_runner.viewer.sampler import MAX_NEW_TOKENS, Sampler

PRIVATE = {"api_visibility": "private"}


def launch_tab():
    gr.Markdown("Fill in what differs from the preset (empty fields keep the preset's value). The runner's own "
                "validation checks everything before anything starts; the run appears in the table at the next "
                "refresh.")

    def field(label: str):  # text, not gr.Number: an empty number box would send 0, not "keep the preset"
        return gr.Textbox(label=label, placeholder="preset", max_lines=1)

    with gr.Row():
        model = gr.Dropdown(["", *presets("model")], value="", label="model preset")
        parallel = gr.Dropdown(["", *presets("parallel")], value="", label="parallel layout")
        nproc = field("processes (parallel.nproc_per_node)")
        precision = gr.Dropdown(["", *PRECISIONS], value="", label="precision")
        name = gr.Textbox("viewer", label="run name", max_lines=1)
    with gr.Row():
        n_layer, n_head, n_embd, block_size, dropout = (field(label) for label in (
            "n_layer", "n_head", "n_embd", "block_size", "dropout"))
    with gr.Row():
        lr, batch_size, grad_accum, max_iters = (field(label) for label in (
            "learning rate", "batch size", "grad accumulation", "iterations"))
        recompute = gr.Checkbox(False, label="activation recomputation")
        compile_ = gr.Checkbox(False, label="torch.compile")
    extra = gr.Textbox(label="extra settings (key=value, space-separated; the README lists the keys)",
                       elem_id="extra-overrides", placeholder="optimizer.warmup_iters=10 experiment=baby_cpu")
    launch = gr.Button("Check and start", variant="primary", elem_id="launch-button")
    status = gr.Markdown(elem_id="launch-status")
    with gr.Row():
        procs = gr.Dropdown([], label="runs started from this page", elem_id="launched", scale=3)
        stop = gr.Button("Stop (SIGTERM)", variant="stop", scale=1)
    log = gr.Textbox(label="launcher output (last lines)", lines=8, max_lines=8, autoscroll=True)
    form = dict(zip(FORM_FIELDS, [model, n_layer, n_head, n_embd, block_size, dropout, lr, batch_size, grad_accum,
                                max_iters, precision, recompute, compile_, parallel, nproc, name], strict=True))
    return form, extra, launch, status, procs, stop, log


def wire_launch(launcher: Launcher, dashboard: Dashboard, timer, form, extra, launch, status, procs, stop, log):
    fields = list(form)

    def processes(selected_pid):
        choices = [(p.describe(), pid) for pid, p in launcher.processes.items()]
        pid = selected_pid if selected_pid in launcher.processes else (choices[-1][1] if choices else None)
        return gr.Dropdown(choices=choices, value=pid), launcher.log_tail(pid) if pid else ""

    def start(*values):
        form_values = dict(zip(fields, values[:-1], strict=True))
        try:
            launched = launcher.start(form_values, values[-1])
        except LaunchError as err:
            return ("**Not started:**\n\n" + "\n".join(f"- {markdown_text(line)}" for line in str(err).splitlines()),
                    *processes(None))
        dashboard.store.rescan_soon()
        return (f"Started pid {launched.process.pid}: `nanogpt-run {' '.join(launched.overrides)}`",
                *processes(launched.process.pid))

    launch.click(start, [*form.values(), extra], [status, procs, log], concurrency_limit=2, **PRIVATE)

    def stop_run(pid):
        if pid is None:
            return "Pick a run started from this page first."
        try:
            return launcher.stop(int(pid))
        except (LaunchError, TypeError, ValueError) as err:  # the page may send anything as the pid
            return str(err)

    stop.click(stop_run, [procs], [status], **PRIVATE)
    timer.tick(processes, [procs], [procs, log], show_progress="hidden", trigger_mode="once", **PRIVATE)


def sample_tab():
    gr.Markdown("Generate text from a run's latest checkpoint (in a separate process; the viewer loads no model).")
    with gr.Row():
        run = gr.Dropdown([], label="run with a checkpoint", elem_id="sample-run", scale=3)
        max_tokens = gr.Number(200, precision=0, minimum=1, maximum=MAX_NEW_TOKENS, label="new tokens")
    prompt = gr.Textbox("\n", label="prompt", lines=2)
    button = gr.Button("Generate", variant="primary")
    out = gr.Textbox(label="sample", lines=12, elem_id="sample-out")
    return run, prompt, max_tokens, button, out


def wire_sample(sampler: Sampler, dashboard: Dashboard, timer, run, prompt, max_tokens, button, out):
    def runs_with_checkpoints(current):
        choices = [(r.label, r.id) for r in sampler.runs(dashboard.store.records())]
        ids = [c[1] for c in choices]
        return gr.Dropdown(choices=choices, value=current if current in ids else (ids[0] if ids else None))

    timer.tick(runs_with_checkpoints, [run], [run], show_progress="hidden", trigger_mode="once", **PRIVATE)

    def generate(run_id, prompt_text, tokens):
        entry = dashboard.store.get(run_id)
        if entry is None:
            raise gr.Error("Pick a run from the list.")
        try:
            return sampler.sample(entry.record.path, prompt_text or "", int(tokens or 1))
        except (LaunchError, TypeError, ValueError) as err:  # the page may send anything as the token count
            raise gr.Error(html.escape(str(err))) from err  # gr.Error renders HTML; the text names run folders

    button.click(generate, [run, prompt, max_tokens], [out], concurrency_limit=1, **PRIVATE)
