"""Characters → index tensors: the corpus formats, their minibatches, and prepared corpora.

Reading order: `batches` (the two formats, `text` and `lines`, and the minibatches cut from an
in-memory corpus), `prepare` (streaming any number of corpora into a memory-mapped token
array), `prepared` (reading that array back as the same minibatches).
"""
