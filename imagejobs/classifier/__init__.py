"""The ImageNet classifier the classify worker runs.

  model.py             Classifier: load once per process, classify paths in batches (TFLite, or Keras)
  efficientnet_lite.py the built-in EfficientNet-Lite0, built in Keras from its PyTorch weights
  torch_weights.py     reading those weights without torch, and without running any pickle

Only the classify worker imports this package (processors/classify.py does, when it first runs), so
the API and the image workers never load numpy's model libraries, TensorFlow or LiteRT.
"""

from imagejobs.classifier.model import Classifier, ModelMissing

__all__ = ["Classifier", "ModelMissing"]
