"""The real models: on-device LLM (``local``), cloud chat endpoint (``cloud``), embeddings.

Importing this package is cheap; torch, transformers and sentence-transformers are imported
inside the functions that need them (``pip install 'tmo-graph[local]'``).
"""
