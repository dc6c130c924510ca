"""Where the U-Net runs: ``runtime`` chooses and holds the backend (torch; OpenVINO on CPUs, ``openvino``;
CUDA graphs of torch.compile's or the eager kernels on GPUs, ``cudagraph``) and hears of weight changes;
``cache`` is the bounded disk cache of converted U-Nets (``latentgen cache``).
"""


def raise_if_interrupted(e: BaseException) -> None:
    """Raise KeyboardInterrupt when ``e`` is a Ctrl-C in disguise, before a fallback would carry on drawing:
    OpenVINO's converter catches the KeyboardInterrupt raised inside its Python callbacks and raises its own
    error ("... KeyboardInterrupt: ..."), and a library may chain one as the cause or context."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt) or "KeyboardInterrupt" in str(e):
            raise KeyboardInterrupt from e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
