"""The way to Triton: everything that talks to the Triton server for a request.

- :mod:`.gateway`: :class:`~.gateway.TritonGateway`, the one client of a worker (metadata,
  infer, errors translated to ours);
- :mod:`.hop`: one infer call over HTTP, the v2 binary extension on the wire;
- :mod:`.coalesce`: concurrent batch-1 requests joined into one Triton call;
- :mod:`.batches`: more rows than ``max_batch_size`` split into calls and joined back;
- :mod:`.shm`: large tensors through system shared memory;
- :mod:`.pool`: a fair queue for a connection pool under gevent;
- :mod:`.deadline`: the request deadline, and how a call survives it;
- :mod:`.generate`: the generate extension over HTTP, streamed as it arrives;
- :mod:`.handle`: the Triton a processor's ``predict()`` is given.

This ``__init__`` imports nothing, so importing a processor module never imports
``tritonclient``.
"""
