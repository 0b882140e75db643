"""The torch dtype of each precision name the config accepts (tf32 computes in fp32 storage)."""

import torch

DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
