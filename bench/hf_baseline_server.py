"""Reference server for ``bench.bench_serve``: plain FastAPI + transformers' fill-mask pipeline.

What a straightforward deployment looks like: a synchronous endpoint (FastAPI runs it in its
thread pool) calling ``pipeline("fill-mask")`` once per request, no batching, no queue. It loads
the same checkpoint directory as our server (``from_pretrained(dir)``) and uses the same torch
thread count, so the comparison is about the serving design, not the settings.

    python -m bench.hf_baseline_server --checkpoint DIR --port 8001

Deliberately minimal: no limits, no metrics, no error shape. Loopback only.
"""

from __future__ import annotations

import argparse
import logging

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel


class FillMaskRequest(BaseModel):
    inputs: str | list[str]
    top_k: int = 5


def create_app(checkpoint: str) -> FastAPI:
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForMaskedLM.from_pretrained(checkpoint).eval()
    if len(tokenizer) != model.config.vocab_size:
        raise SystemExit(f"tokenizer has {len(tokenizer)} tokens, model {model.config.vocab_size}")
    fill = pipeline("fill-mask", model=model, tokenizer=tokenizer, device="cpu")
    app = FastAPI(title="hf-baseline")

    @app.post("/fill-mask")
    def fill_mask(req: FillMaskRequest) -> dict:
        """Fill masks with the transformers pipeline."""
        return {"predictions": fill(req.inputs, top_k=req.top_k)}

    @app.get("/health")
    def health() -> dict:
        """Always ok once started."""
        return {"status": "ok"}

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--torch-threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    logging.basicConfig(level=logging.WARNING)
    uvicorn.run(create_app(args.checkpoint), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
