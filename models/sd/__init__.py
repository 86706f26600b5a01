"""The speculative-decoding engine's parts; :mod:`models.speculative` is its entry point (``speculative_generate``,
``rejection_sample``): ``verify`` (acceptance maths), ``kv_cache`` (the decoders SD drives), ``quantization``
(int8 decoding), ``drafts`` (drafts built from a decoder-only target, FR-Spec heads) and ``bench`` (the latency
benchmark's settings and estimators; its timing harness is :mod:`engine.sd_bench`)."""
