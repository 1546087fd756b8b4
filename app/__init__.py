"""bertserve's HTTP model server: fill-mask and embeddings with dynamic batching and hot-swap.

Entry points: ``app.main.create_app(config)`` (the FastAPI factory) and ``app.cli.main``
(``bert-serve``). Importing this package loads nothing heavy; it never imports ``training``.
"""
