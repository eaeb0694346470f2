"""`fastfcn-hub train`: mmsegmentation's FastFCN recipe with the transformers Trainer (see `fastfcn_hub.training`).

Every `TrainingArguments` option works (`--output_dir`, `--max_steps`, `--resume_from_checkpoint`, `--push_to_hub`,
...), with the recipe's defaults. Multi-process runs need no change: `torchrun --nproc_per_node N
scripts/train.py ...` or `accelerate launch scripts/train.py ...`.
"""

from __future__ import annotations

import argparse
import json
import logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..training import add_training_arguments

    add_training_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..training import arguments_from_namespace, train

    model_args, data_args, training_args = arguments_from_namespace(args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("fastfcn_hub").setLevel(training_args.get_process_log_level())
    metrics = train(model_args, data_args, training_args)
    if training_args.process_index == 0:
        print(json.dumps({key: value for key, value in metrics.items() if not key.startswith("eval_iou_")}, indent=2))
    return 0
