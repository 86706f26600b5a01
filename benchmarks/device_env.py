"""One line for a device run's record: Python, torch and transformers versions, and the accelerator torch sees."""

import sys

import torch
import transformers

device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
print(f"python {sys.version.split()[0]} | torch {torch.__version__} | transformers {transformers.__version__} "
      f"(from {transformers.__file__.rsplit('/transformers/', 1)[0]}) | device {device}")
