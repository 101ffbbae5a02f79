"""sha256 of every config's lowered CPU train and eval steps (StableHLO, no locations).

    python benchmarks/step_hashes.py [--configs NAME ...] > hashes.json

Run in two trees and compare (``diff``): equal hashes mean a change left the
programs that run every step as they were, so their speed is unchanged too.
Each config is built at full size with ``accelerators.step_inputs`` (abstract
arrays: nothing of the data set's size is allocated) and lowered, not compiled.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import importlib
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jaxres import sharding  # noqa: E402
from jaxres.tools import accelerators  # noqa: E402


def step_hashes(name: str) -> dict[str, str]:
    config = importlib.import_module(f'configs.{name}').get_config()
    inputs = accelerators.step_inputs(config, sharding.make_data_mesh(), 'cpu')
    state = inputs.state
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    lowered = {'train_step': inputs.step_fn.lower(state, *inputs.args),
               'eval_step': inputs.setup.evaluator.sums_fn.lower(variables, None,
                                                                 inputs.eval_batch)}
    return {k: hashlib.sha256(program_text(v).encode()).hexdigest()[:16]
            for k, v in lowered.items()}


def program_text(lowered) -> str:
    """StableHLO without locations, and without the module's name (the Python
    function's, ``jit_<name>``): renaming a function leaves the program as it was."""
    return re.sub(r'^module @\S+', 'module @step', lowered.as_text(debug_info=False), count=1)


def main() -> int:
    names = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
                   if not p.endswith('__init__.py'))
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--configs', nargs='*', default=names)
    args = parser.parse_args()
    print(json.dumps({name: step_hashes(name) for name in args.configs}, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
