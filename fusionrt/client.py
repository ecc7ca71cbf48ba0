"""`fusionrt.client`: classify on a Triton Inference Server serving a `fusionrt triton` repository (see
fusionrt.serving.client; needs `pip install 'fusionrt[triton]'`)."""

from fusionrt.serving.client import ServingError, TritonClient, encode_image

__all__ = ["TritonClient", "ServingError", "encode_image"]
