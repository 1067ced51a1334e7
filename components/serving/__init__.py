"""The query service: a live (model, gallery) pair swapped atomically as promotions happen (DESIGN.md §14).

- pair.py: :class:`LivePair`, building and health-checking one;
- searcher.py: a gallery version as a searcher (the one place a gallery becomes searchable);
- batching.py: concurrent queries share one forward pass and one search;
- watcher.py: follows the champion alias and CURRENT, swaps when both agree;
- service.py: the live reference, the watcher and the batcher together;
- app.py: the FastAPI endpoints; metrics.py: Prometheus metrics;
- server.py: running it under uvicorn.
"""
