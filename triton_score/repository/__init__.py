"""The model repository on disk: where it is (:mod:`.locations`) and how its example
models are built (:mod:`.builds`)."""
