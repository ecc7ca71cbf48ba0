"""TensorRT engines for a bundle (`fusionrt build`): TensorRT 10/11 on the GPU, TensorRT-RTX also on a CPU. The runtime
runs them (`fusionrt.runtime.backends.tensorrt`); building lives here."""

__all__ = ["build_engines"]


def __getattr__(name):  # the builder imports TensorRT's Python package only when used
    if name == "build_engines":
        from fusionrt.engines.build import build_engines

        return build_engines
    raise AttributeError(name)
