"""The processor author's kit: ``score new`` (:mod:`.scaffold`), ``score check``
(:mod:`.check`), the pytest plugin (:mod:`.testing`) and processor helpers
(:mod:`.nltk_data`)."""
