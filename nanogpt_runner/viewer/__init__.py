"""The Gradio dashboard (``nanogpt-view`` / ``python viewer.py``): tails every run live and compares them.

It reads run directories only (nanogpt_runner.runs.rundir), never imports torch, and starts in seconds, so it
runs on a laptop pointed at a copy or a mount of a cluster's outputs folder.
"""
