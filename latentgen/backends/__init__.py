"""Where the U-Net runs: ``runtime`` chooses and holds the backend (torch; OpenVINO on CPUs, ``openvino``;
CUDA graphs of torch.compile's or the eager kernels on GPUs, ``cudagraph``) and hears of weight changes;
``cache`` is the bounded disk cache of converted U-Nets (``latentgen cache``).
"""
