"""Where the U-Net runs: ``runtime`` chooses and holds the backend (torch; OpenVINO on CPUs, ``openvino``;
CUDA graphs of torch.compile's or the eager kernels on GPUs, ``cudagraph``) and hears of weight changes;
``cache`` is the bounded disk cache of converted U-Nets (``latentgen cache``).
"""

import functools


@functools.lru_cache(maxsize=1)
def openvino_core():
    """The process's one ``openvino.Core``, kept for good. Each Core makes its own CPU plugin; the plugin sets the
    calling thread's alternate signal stack (an mmap, for AMX) and, when the last model compiled by it goes, puts
    back the stack it found and unmaps its own. Plugins that end out of order left the main thread's alternate
    stack on unmapped memory, so the next signal with a handler on that stack (Python's SIGINT handler is
    installed with SA_ONSTACK) killed the process with SIGSEGV instead of a KeyboardInterrupt. One plugin that
    lives as long as the process sets it once and never unmaps it."""
    import openvino

    return openvino.Core()


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
