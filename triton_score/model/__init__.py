"""What we know about a model, and what its tensors must be.

- :mod:`.info`: :class:`~.info.ModelInfo` and :class:`~.info.TensorSpec`, from Triton's
  metadata, and the datatype table;
- :mod:`.config`: ``config.pbtxt`` read as Triton's JSON model configuration;
- :mod:`.validation`: tensors checked against the model before they are sent.
"""
