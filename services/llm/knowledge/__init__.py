"""The knowledge base on the llm worker: reading documents into passages, indexing them (embeddings and
BM25), retrieving passages for a question and grounding the reply on them."""
