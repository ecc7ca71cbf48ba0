"""fusionrt.data: labelled image+text data sets, read without torch. The one neutral module that training (export)
and calibration both read their data through: it sits above the runtime and below both of them."""

from fusionrt.data.dataset import LabeledDataset, Sample

__all__ = ["LabeledDataset", "Sample"]
