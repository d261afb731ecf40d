"""What the scripts share, one job a module.

common       the bottom layer: UserError and the constants of the data and the network
cli          one-line errors, argparse with checked types, the flags every script has
device       device choice, the choice of precision, autocast and loss scaling, the CPU allocator setting
distributed  DDP: joining the process group, sums and batch-norm statistics over ranks
files        atomic writes, all-or-none groups of files, folder checks and locks
plots        matplotlib without a display, atomic figure saves, the learning curves
checkpoints  safe checkpoint files, and RunFolder: one training run's folder
training     the optimizer, the learning-rate schedule and the training step
inference    batch-norm folding, int8, and the one evaluation and prediction path
"""
