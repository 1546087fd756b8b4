"""Benchmarks: each compares bertserve with its reference system in one run and prints ratios.

The benchmarks, one script each (``python -m bench.<name>``; ``bench.run_all`` runs them in turn,
each in its own process): bench_tokenizer, bench_model, bench_precision (fp32 / bf16 / int8
against ONNX Runtime and transformers, and over HTTP), bench_train, bench_serve, bench_embed,
bench_ui, bench_retrieval, bench_rerank, bench_cloze, bench_finetune, bench_sop; and the studies,
run by hand: bench_recipes (the pretraining recipe sweep) and study_int8 (every int8 lever, and
where int8's error comes from).

What they share, so that no benchmark imports another (tests/bench/test_bench_imports.py):
  common.py              paths, logging, the CPU record, results files, tables, arguments,
                         the gloss batches the precision benchmarks time, best-of-rounds timing
  encoders.py            random encoders of all-MiniLM-L6-v2's and BERT-base's shapes
  server.py              the server under test: a subprocess on a free loopback port
  wrk.py                 load from wrk, and the /metrics histograms read back
  hf_baseline_server.py  the plain transformers fill-mask server bench_serve measures against
  efficiency.py          bench_model part 2: matmul peak, FLOP count, encoder GFLOP/s
  hf_compare.py          bench_model part 1: fill-mask forward against transformers
  report.py              docs/benchmarks.md, rendered from bench/results/*.json; bench_precision
                         and study_int8 print their tables with its renderers
Results land in bench/results/, committed; `python -m bench.report` renders them into
docs/benchmarks.md (a test keeps the page equal to that rendering).
"""
