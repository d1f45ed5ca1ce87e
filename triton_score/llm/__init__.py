"""Language models behind Triton, the model side of the OpenAI-compatible front.

One concept a module:

* :mod:`~triton_score.llm.text`: a model's tokenizer and chat template, read from its folder;
* :mod:`~triton_score.llm.detokenize`: token ids to text, piece by piece, never half a character;
* :mod:`~triton_score.llm.stops`: stop sequences found even when they span two chunks;
* :mod:`~triton_score.llm.adapters`: a generation request in the inputs a Triton LLM backend
  takes (the vLLM backend's, TensorRT-LLM's), and its text out of each response;
* :mod:`~triton_score.llm.upstream`: the one place that talks to Triton (``generate_stream``);
* :mod:`~triton_score.llm.models`: the language models one gateway knows, per model.

The HTTP routes are :mod:`triton_score.http.openai`. Everything here needs the ``llm`` extra.
"""
