"""What every training run shares, whatever it trains.

    options.py        RunConfig: the settings every run shares, their coercion and checks
    loop.py           RunLoop: the one loop (resume, optimizer, budget, non-finite guard, stop
                      request, checkpoint state) that pretraining and fine-tuning extend
    checkpointing.py  atomic checkpoint directories, `latest`/`best` pointers, rotation
    distributed.py    DDP from torchrun's environment, barriers, device, precision, RNG states,
                      the stop request
    metrics.py        metrics.jsonl, TensorBoard, curves.png; the loop's window averages (RunLog)
    schedule.py       warmup + cosine or linear LR over steps or over a wall-clock budget

Deliberately not here: anything that knows what is trained (objectives, data, models' heads).
"""
