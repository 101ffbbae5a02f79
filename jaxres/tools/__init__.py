"""Tools beside training: ``bench`` (step speed), ``accelerators`` (CUDA/TPU
lowering checks), ``plot`` (PNG curves from metrics.jsonl), ``summary`` (the
parameter table of --mode=summary)."""
