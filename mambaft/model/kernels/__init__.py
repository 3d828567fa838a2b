"""The model's fused kernels, each module beside its pure-PyTorch reference twin (the tests compare
them): SWELU and the fused SWELU x sigmoid gate (swelu.py, `swelu_reference`), the causal depthwise
conv (conv.py; twin: nn.Conv1d), the chunked linear + cross-entropy loss (loss.py; twin: the full
logits and F.cross_entropy) and the selective scan (scan.py, `selective_scan_ref`; mamba-ssm's CUDA
kernel when installed). One switch, `switch.fused()` (MAMBAFT_KERNELS=fused|reference), picks either
side for the conv, SWELU, the gate and the loss."""
