"""The Thai word segmenter's parts; :mod:`models.thai_segmenter` is its entry point (``ThaiSegmenter``,
``SegmenterConfig``): ``chars`` (character classes, where orthography forbids a word start, code-point tables),
``ngrams`` (hashed character n-gram rows), ``layers`` (the channels-last convolution and its fused GELU),
``inference`` (batched inference over concatenated texts) and ``metrics`` (word starts, boundary and word
precision, recall and F1)."""
