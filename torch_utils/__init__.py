"""PyTorch helpers whose module paths are part of the pickle compatibility surface.

Code embedded in upstream pickles imports ``torch_utils.persistence``,
``torch_utils.misc``, ``torch_utils.distributed`` and
``torch_utils.training_stats`` by these exact names.
"""
