"""Candidate retrieval over exported item vectors (the only package that imports faiss)."""


def faiss_version() -> str:
    import faiss

    return str(faiss.__version__)
