"""``python viewer.py [RUNS_DIR]``: the dashboard, without installing the console script first."""

from nanogpt_runner.viewer.app import main

if __name__ == "__main__":
    main()
