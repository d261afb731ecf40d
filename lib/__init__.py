"""What the scripts share, one job a module.

common         the bottom layer: UserError and the constants of the data and the network
cli            one-line errors, argparse with checked types, the flags every script has
device         device choice, the choice of precision, autocast and loss scaling, the CPU allocator setting
distributed    DDP: joining the process group, sums and batch-norm statistics over ranks
files          atomic writes, all-or-none groups of files, folder checks and locks
plots          matplotlib without a display, atomic figure saves, the learning curves
reports        what the reports of some weights are called and where they go
checkpoints    the checkpoint file: safe to load, checked before use
runs           a training run's folder: refusing, resuming, saving best.pt, last.pt and metrics all or none
training       the optimizer, the learning-rate schedule and the training step
fast_copies    batch-norm folding and int8: faster copies of a model for inference
inference      models loaded for inference, ensembles, and the one evaluation and prediction path
corruptions    the corruptions of test.py --robustness
images         users' image files, read as a viewer shows them and made to look like MNIST
drawpad        predict.py --draw's window
"""
