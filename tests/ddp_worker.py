"""Run by torchrun in test_ddp.py: train as train.py does, then save this rank's final weights for comparison."""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import train

if __name__ == "__main__":
    weights_dir, argv = Path(sys.argv[1]), sys.argv[2:]
    model = train.main(argv)
    torch.save(model.state_dict(), weights_dir / f"rank{os.environ['RANK']}.pt")
