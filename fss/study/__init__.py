"""``fss study``: the convergence-speed study of the HM paper, as one command.

A study runs one base experiment (a normal ``fss fit`` config) once per *variant* (a value of each
swept option, by default ``model.masking`` in fm / im / hm), per fold and per seed, with the same
data and early-stopping rule; every run is a ``fit`` followed by a ``test`` of its best checkpoint.
It then writes into the study directory::

    <output_dir>/
      runs.csv        one row per run: best epoch, best val mIoU, test mIoU / FB-IoU, epoch_95, wall time
      summary.csv     mean and standard deviation over seeds per (variant, fold) and per variant
      study.md        the tables (rows = variants, columns = folds / mean), as the HM paper's
                      "Number of best epochs" table, for each of those measures
      curves.png      val mIoU per epoch, one line per variant, seeds as a band (one panel per fold)
      per_class_iou.csv   test IoU per class, per run
      runs/<variant>/fold<f>-seed<s>/   one run: checkpoints/{best,last}.ckpt, wandb/, and the
                      CSVLogger directories fit/ (metrics.csv, config.yaml, best.json; a resumed fit
                      continues in it and in the same W&B run) and test/ (metrics.csv, test_results.json)

Study config (YAML)::

    name: study_demo                 # W&B group and default output directory name
    base: demo.yaml                  # the fit config: a path (relative to this file, else to the
                                     # working directory) or the config itself as a mapping
    output_dir: runs/study_demo
    sweep:                           # option -> list of values, or mapping label -> value
      model.masking: [fm, im, hm]
      model.backbone.weights: {random: null, trained: runs/pretrain_synthetic/backbone.pth}
    folds: [0]                       # written to data.init_args.fold (option fold_key)
    seeds: [0, 1]                    # written to seed_everything (model init and shuffling)
    overrides: {trainer.max_epochs: 15}   # options set on every run
    wandb: {project: fss-study, offline: true}   # or wandb: false
    pretrain: pretrain_synthetic.yaml    # optional `fss pretrain` config run first (once)
    stage1: {config: pascal_bam_base.yaml, option: model.net.base_learner}   # optional first
                                     # stage, fitted once per fold; its checkpoint goes to `option`

Finished runs (``best.json`` and ``test/test_results.json`` present) are skipped; a run
interrupted during fit restarts from ``checkpoints/last.ckpt``. ``--emit-commands`` prints the
``fss fit ... && fss test ...`` line of every run for a cluster scheduler (see ``docs/study.md``).

The package, one job per module: :mod:`~fss.study.config` (the study config, its runs and their
command lines), :mod:`~fss.study.runner` (running them: subprocesses, this process, a SLURM array
script, submitit), :mod:`~fss.study.tables` (records, summaries over seeds, Markdown and CSV),
:mod:`~fss.study.plots` (learning curves) and :mod:`~fss.study.command` (``fss study``). The test
runs write their results with :class:`fss.callbacks.TestResultsWriter`.
"""

from fss.study.command import main, report
from fss.study.config import Run, Study, StudyConfigError, cli_value, command_line
from fss.study.plots import curves_figure, mean_curve, plot_curves
from fss.study.runner import run_one, run_study
from fss.study.tables import MEASURES, collect, epoch_reaching, markdown, read_curve, summarize

__all__ = [
    "MEASURES",
    "Run",
    "Study",
    "StudyConfigError",
    "cli_value",
    "collect",
    "command_line",
    "curves_figure",
    "epoch_reaching",
    "main",
    "markdown",
    "mean_curve",
    "plot_curves",
    "read_curve",
    "report",
    "run_one",
    "run_study",
    "summarize",
]
