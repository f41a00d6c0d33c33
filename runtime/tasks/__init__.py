"""One pipeline per task, each owning all of it: the capability check (once, before any work),
pre-processing (tokenise; fetch and decode images), the tower, and post-processing (truncation,
normalisation, output precision, sparse top-k, activations and labels, rank order).

Each module has a small options dataclass (what a request asks), a class whose constructor
checks the model and whose `prepare` and `run` are the stages, and a function that runs them all:

    text_embedding        TextEmbedding,       embed_texts(model, texts, options)
    image_embedding       ImageEmbedding,      embed_images(model, sources, options, headers)
    sparse_embedding      SparseEmbedding,     embed_sparse(model, texts, options)
    token_embeddings      TokenEmbeddings,     embed_tokens(model, texts, options)
    rerank                Rerank,              rerank(model, query, texts, options, images)
    text_classification   TextClassification,  classify_texts(model, texts, options)
    image_classification  ImageClassification, classify_images(model, sources, headers)

`capabilities` holds the checks they share; `embedding` the dense output (options and
post-processing) that text and image embeddings share; `text_inputs` the tokenising of texts and
token ids. Errors speak of models and inputs (runtime.errors); the API adds which route to use.
"""
