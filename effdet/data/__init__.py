"""Datasets (conf/data/*.yaml): conversion to TFRecords (`python -m effdet.data.convert`), the synthetic
shapes set, and the input pipeline. The dataset registry is `effdet.data.sources.DATASETS`.

Kept free of imports on purpose: the converter's command line must start without loading TensorFlow.
"""
