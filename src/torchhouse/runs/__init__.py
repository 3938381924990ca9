"""Run folders: what one fit writes when given ``run_dir``, and reading them back.

- `RunFolder` (`folder`): the folder's one writer, its lock (`lock`), the training states
  (`state`) and the resume choice (`resume`);
- the serving files (`serve_files`), `History` (`history`) and ``history.csv`` (`history_csv`);
- listing and plots for people (`listing`, `plots`): `runs_table`, `describe_run`, `plot_run`.

Example::

    import torchhouse as th
    print(th.runs.runs_table("runs"))
    th.runs.plot_run("runs/demo", "runs/demo/history.png")
"""

from torchhouse.runs.folder import RUN_FILES, STATE_PREFIX, RunFolder
from torchhouse.runs.history_csv import read_history_csv, write_history_csv
from torchhouse.runs.listing import describe_run, format_table, list_runs, plot_run, run_status, runs_table

__all__ = [
    "RUN_FILES",
    "STATE_PREFIX",
    "RunFolder",
    "describe_run",
    "format_table",
    "list_runs",
    "plot_run",
    "read_history_csv",
    "run_status",
    "runs_table",
    "write_history_csv",
]
