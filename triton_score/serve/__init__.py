"""The ``score serve`` process tree: the supervisor (:mod:`.supervisor`) that starts or finds
Triton and runs Gunicorn with :mod:`.gunicorn_conf`."""
